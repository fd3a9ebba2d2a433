"""``loda.export``: ONNX export (normalisation in the graph) and TensorRT engine builds."""
