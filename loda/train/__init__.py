"""Training and evaluation of the PyTorch model."""
