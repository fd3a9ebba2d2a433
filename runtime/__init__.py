"""``loda.runtime``: torch-free scoring (ONNX Runtime, TensorRT). Must never import torch."""
