"""Evaluation with the paper's protocol: 15 crops per test image, the image score is the mean of
its crops' scores, then SRCC / PLCC / KRCC / RMSE against MOS (:mod:`loda.metrics`).

The grid layout (deterministic) is the default; ``layout="random"`` with a seed reproduces the
authors' random crops. Crops come from :mod:`loda.preprocess`, exactly as in the runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from loda.data.datasets import Sample
from loda.inference import crops_to_tensor
from loda.metadata import Calibration
from loda.metrics import evaluate as compute_metrics
from loda.model import LoDa
from loda.preprocess import PreprocessConfig, preprocess_image

__all__ = ["EvalResult", "evaluate_samples", "predict_samples"]


@torch.inference_mode()
def predict_samples(
    model: LoDa,
    samples: Sequence[Sample],
    preprocess: PreprocessConfig,
    *,
    seed: int | None = None,
    batch_size: int = 60,
    progress: bool = False,
    desc: str = "eval",
) -> np.ndarray:
    """Mean crop score per sample (float64). Random layouts draw image i's crops from
    ``default_rng([seed, i])``, so results do not depend on batching."""
    if preprocess.layout == "random" and seed is None:
        raise ValueError("the random crop layout needs a seed")
    device = next(model.parameters()).device
    model.eval()
    n_crops = preprocess.num_crops

    def crops_of(i: int) -> np.ndarray:
        rng = None if preprocess.layout == "grid" else np.random.default_rng([seed, i])
        return preprocess_image(samples[i].path, preprocess, seed=rng)

    sums = np.zeros(len(samples))
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        crops = np.concatenate([c for _, c in pending])
        scores = model.score(crops_to_tensor(crops, preprocess).to(device)).double().cpu().numpy()
        for k, (i, _) in enumerate(pending):
            sums[i] = scores[k * n_crops : (k + 1) * n_crops].mean()
        pending.clear()

    per_batch = max(1, batch_size // n_crops)
    with ThreadPoolExecutor(max_workers=2) as pool:  # decode the next images during inference
        results = pool.map(crops_of, range(len(samples)))
        for i, crops in enumerate(
            tqdm(results, total=len(samples), desc=desc, disable=not progress, unit="img")
        ):
            pending.append((i, crops))
            if len(pending) >= per_batch:
                flush()
        flush()
    return sums


@dataclass
class EvalResult:
    metrics: dict[str, float]
    calibration: Calibration
    predictions: np.ndarray
    mos: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics,
            "calibration": self.calibration.to_dict(),
        }


def evaluate_samples(
    model: LoDa,
    samples: Sequence[Sample],
    preprocess: PreprocessConfig,
    *,
    dataset_name: str,
    mos_range: tuple[float, float],
    seed: int | None = None,
    num_crops: int = 15,
    progress: bool = False,
) -> EvalResult:
    """Score ``samples`` with ``num_crops`` crops each and compute the paper's metrics; the
    logistic fit of PLCC becomes the checkpoint's score calibration."""
    cfg = dataclasses.replace(preprocess, num_crops=num_crops)
    pred = predict_samples(model, samples, cfg, seed=seed, progress=progress)
    mos = np.array([s.mos for s in samples], dtype=np.float64)
    result = compute_metrics(pred, mos)
    fit = result.pop("fit")
    calibration = Calibration(fit=fit, dataset=dataset_name, mos_range=tuple(mos_range))
    metrics = {k: (int(v) if k == "n" else float(v)) for k, v in result.items()}
    return EvalResult(metrics=metrics, calibration=calibration, predictions=pred, mos=mos)
