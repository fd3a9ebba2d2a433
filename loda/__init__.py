"""LoDa no-reference image quality assessment: reference model, export and runtime.

Importing ``loda`` loads neither torch nor timm; ``loda.model``, ``loda.checkpoint`` and
``loda.backbones`` do. ``loda.preprocess``, ``loda.metrics``, ``loda.config`` and
``loda.metadata`` are torch-free and shared with the runtime.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loda")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
