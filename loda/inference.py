"""Scoring with the PyTorch reference model, on the shared preprocessing.

The crops a model sees here are produced by :mod:`loda.preprocess` (uint8 NHWC) and normalised
by :func:`loda.preprocess.normalize`; this module only wraps the result in a tensor, so the torch
path receives exactly the pixels every other backend receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import LoDa
from .preprocess import PreprocessConfig, normalize, preprocess_image

__all__ = ["ImageScore", "crops_to_tensor", "score_crops", "score_image"]


def crops_to_tensor(crops: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 NHWC crops -> normalised float32 NCHW tensor (the shared numpy normalisation)."""
    return torch.from_numpy(normalize(crops, cfg.mean, cfg.std))


@torch.inference_mode()
def score_crops(
    model: LoDa, crops: np.ndarray, cfg: PreprocessConfig, *, batch_size: int = 32
) -> np.ndarray:
    """Per-crop scores (float64 [n]) for uint8 NHWC crops."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(crops), batch_size):
        x = crops_to_tensor(crops[start : start + batch_size], cfg).to(device)
        out.append(model.score(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class ImageScore:
    score: float
    crop_scores: np.ndarray

    @property
    def spread(self) -> float:
        return float(self.crop_scores.std())


def score_image(
    model: LoDa, source, cfg: PreprocessConfig, *, seed: int | None = None
) -> ImageScore:
    """Score one image: its crops' mean score (the authors' evaluation rule)."""
    crops = preprocess_image(source, cfg, seed=seed)
    crop_scores = score_crops(model, crops, cfg)
    return ImageScore(score=float(crop_scores.mean()), crop_scores=crop_scores)
