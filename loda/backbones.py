"""Pretrained backbone weights without the network.

LoDa's two backbones are ImageNet-pretrained timm models (``vit_base_patch16_224.augreg2_in21k_ft_in1k``
and ``resnet50``). Their weights come from a file the user names (``.safetensors``, or a torch
file read with ``torch.load(weights_only=True)``) or from the local Hugging Face cache, where
timm stores what it downloads (``$HF_HOME/hub/models--timm--<name>/snapshots/*/model.safetensors``).
Nothing here downloads: asking for weights that are not there raises
:class:`~loda.errors.BackboneWeightsError` with what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ._state import check_state_dict, load_checked, torch_load_weights_only
from .errors import BackboneWeightsError
from .model import LoDa

__all__ = [
    "find_in_hf_cache",
    "hf_hub_cache_dir",
    "load_backbones",
    "load_cnn_weights",
    "load_vit_weights",
    "read_weights",
]

_CACHE_FILES = ("model.safetensors", "pytorch_model.bin")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BackboneWeightsError(f"cannot read safetensors file {path}: {exc}") from None
    obj = torch_load_weights_only(path, BackboneWeightsError, "file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (as the hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "huggingface"
    )
    return Path(home) / "hub"


def find_in_hf_cache(timm_name: str) -> Path | None:
    """Path of ``timm_name``'s weights in the local Hugging Face cache, or None. No network."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo_id:
        return None
    for filename in _CACHE_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _resolve(weights: str | os.PathLike | None, timm_name: str, option: str) -> Path:
    if weights is not None:
        return Path(weights)
    found = find_in_hf_cache(timm_name)
    if found is None:
        raise BackboneWeightsError(
            f"no pretrained weights for {timm_name}: not in the Hugging Face cache "
            f"({hf_hub_cache_dir()}); "
            f"pass {option} FILE (.safetensors or .pth) or populate the cache on a machine "
            "with network access"
        )
    return found


def _unused_keys(name: str, used: set[str], **kwargs) -> set[str]:
    """Keys that the full timm model has but LoDa does not use (classifier heads)."""
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False, **kwargs)
    return set(full.state_dict()) - used


def load_vit_weights(model: LoDa, weights: str | os.PathLike | None = None) -> Path:
    """Load the ViT backbone from a file (or the HF cache) into the model's top level."""
    path = _resolve(weights, model.config.vit_timm_name, "--vit-weights")
    state = read_weights(path)
    full = model.state_dict()
    expected = {k: full[k] for k in model.vit_state_keys()}
    allowed = _unused_keys(model.config.vit_name, set(expected), img_size=model.config.img_size)
    check_state_dict(expected, state, what=f"ViT weights {path}", allowed_unexpected=allowed)
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    return path


def load_cnn_weights(model: LoDa, weights: str | os.PathLike | None = None) -> Path:
    """Load the CNN backbone from a file (or the HF cache) into ``model.feature_model``."""
    path = _resolve(weights, model.config.cnn_timm_name, "--cnn-weights")
    state = read_weights(path)
    allowed = _unused_keys(model.config.cnn_name, set(model.feature_model.state_dict()))
    load_checked(model.feature_model, state, what=f"CNN weights {path}", allowed_unexpected=allowed)
    return path


def load_backbones(
    model: LoDa,
    *,
    vit_weights: str | os.PathLike | None = None,
    cnn_weights: str | os.PathLike | None = None,
    require_both: bool = True,
) -> dict[str, str]:
    """Load both backbones (``require_both``) or only those given as files."""
    loaded = {}
    if require_both or vit_weights is not None:
        loaded["vit"] = str(load_vit_weights(model, vit_weights))
    if require_both or cnn_weights is not None:
        loaded["cnn"] = str(load_cnn_weights(model, cnn_weights))
    return loaded
