"""Datasets, splits, the demo set and generated images."""
