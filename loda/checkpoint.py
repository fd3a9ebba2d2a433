"""Checkpoints: our single-file ``.safetensors`` format, and import of the authors' format.

Our format (see :mod:`loda.metadata`): every tensor of the model, backbones included, plus a JSON
record. Saving then loading gives bit-identical tensors.

The authors' format (NeosXu/LoDa) is a ``torch.save``d dict ``{"learner": ..., "bn_buffer": ...}``:
the learner's state dict and the CNN's BatchNorm running statistics after training. It is read
with ``torch.load(weights_only=True)``; the two ImageNet backbones come from files or the local
Hugging Face cache (:mod:`loda.backbones`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._state import check_state_dict, load_checked, torch_load_weights_only
from .atomic import atomic_path
from .errors import CheckpointError, first_line
from .metadata import (
    METADATA_KEY,
    Calibration,
    CheckpointMeta,
    git_commit,
    now_utc,
    package_version,
    read_safetensors_metadata,
)
from .model import LoDa, create_model
from .preprocess import PreprocessConfig

__all__ = [
    "BN_BUFFER_SUFFIXES",
    "authors_state",
    "import_authors_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def save_checkpoint(
    model: LoDa,
    path: str | os.PathLike,
    *,
    preprocess: PreprocessConfig | None = None,
    calibration: Calibration | None = None,
    provenance: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Write all of ``model``'s tensors and its metadata record to one safetensors file."""
    record = {
        "package_version": package_version(),
        "git_commit": git_commit(),
        "created": now_utc(),
    }
    record.update(provenance or {})
    meta = CheckpointMeta(
        model=model.config,
        preprocess=preprocess or PreprocessConfig(),
        calibration=calibration,
        provenance=record,
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={METADATA_KEY: meta.to_json(), "format": "pt"})
    except SafetensorError as exc:  # its I/O errors are not OSErrors
        raise CheckpointError(f"cannot write {path}: {first_line(exc)}") from None
    return meta


def load_checkpoint(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[LoDa, CheckpointMeta]:
    """Load one of our checkpoints; the model comes back in eval mode."""
    meta, _ = read_safetensors_metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read tensors of {path}: {exc}") from None
    try:
        model = LoDa(meta.model)
    except ValueError as exc:  # a config the code cannot build (e.g. an unknown backbone)
        raise CheckpointError(f"{path}: its model config cannot be built: {exc}") from None
    load_checked(model, state, what=f"checkpoint {path}")
    return model.to(device).eval(), meta


def authors_state(model: LoDa) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights in the authors' format (what their training script saves)."""
    bn = {
        k: v.detach().cpu()
        for k, v in model.feature_model.state_dict().items()
        if k.endswith(BN_BUFFER_SUFFIXES)
    }
    learner = {k: v.detach().cpu() for k, v in model.learner.state_dict().items()}
    return {"learner": learner, "bn_buffer": bn}


def _read_authors_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    obj = torch_load_weights_only(path, CheckpointError, "checkpoint")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # the authors' training-state files wrap the same dict
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not an authors' LoDa checkpoint (not a dict)")
    # The authors strip a DistributedDataParallel 'module.' prefix from the top-level keys.
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    missing = [k for k in ("learner", "bn_buffer") if not isinstance(obj.get(k), dict)]
    if missing:
        raise CheckpointError(
            f"{path} is not an authors' LoDa checkpoint: no {' or '.join(missing)} dict "
            f"(top-level keys: {', '.join(sorted(map(str, obj))) or 'none'})"
        )
    return obj


def import_authors_checkpoint(
    path: str | os.PathLike,
    *,
    config: str = "loda_b16",
    vit_weights: str | os.PathLike | None = None,
    cnn_weights: str | os.PathLike | None = None,
) -> LoDa:
    """Build ``config`` with pretrained backbones and load an authors' checkpoint into it.

    Missing, unexpected or mis-shaped tensors are reported by name
    (:class:`~loda.errors.StateDictMismatch`).
    """
    path = Path(path)
    obj = _read_authors_file(path)
    model = create_model(config, pretrained=True, vit_weights=vit_weights, cnn_weights=cnn_weights)
    load_checked(model.learner, obj["learner"], what=f"{path} learner")
    expected_bn = {
        k: v for k, v in model.feature_model.state_dict().items() if k.endswith(BN_BUFFER_SUFFIXES)
    }
    check_state_dict(expected_bn, obj["bn_buffer"], what=f"{path} bn_buffer")
    model.feature_model.load_state_dict({k: obj["bn_buffer"][k] for k in expected_bn}, strict=False)
    return model.eval()
