"""Verification of a converted graph (FP16, INT8) against the FP32 graph it came from.

Both graphs run in ONNX Runtime (CPU) on the same real crops, one image's crops per batch, and
:func:`loda.compare.compare_scores` compares them. The check is the rank agreement of the image
scores (an image's score is the mean of its crops): Spearman >= a minimum, and no NaN/inf.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loda.compare import Bound, ScoreStats, compare_scores, nonfinite_problem

if TYPE_CHECKING:
    from loda.data.images import VerificationImages

__all__ = ["compare_graphs", "spearman_problems", "verification_numbers"]

Model = str | os.PathLike | bytes


def compare_graphs(
    reference: Model,
    candidate: Model,
    images: VerificationImages,
    mos: Sequence[float] | None = None,
) -> ScoreStats:
    """Score ``images`` with both graphs in ONNX Runtime (CPU) and compare the candidate's."""
    # ort_session: exact u8u8 kernels where ONNX Runtime's u8s8 ones saturate (loda.cpu_isa), so
    # verification measures the graph, not a CPU's overflow
    from loda.artifacts import ort_scores, ort_session

    ref_session, cand_session = ort_session(reference), ort_session(candidate)
    ref = [ort_scores(ref_session, crops) for crops in images.crops]
    cand = [ort_scores(cand_session, crops) for crops in images.crops]
    return compare_scores(
        np.concatenate(cand),
        np.concatenate(ref),
        crops_per_image=[len(c) for c in images.crops],
        names=images.names,
        mos=mos,
    )


def verification_numbers(stats: ScoreStats, min_images: int) -> dict[str, Any]:
    """The figures the FP16 / INT8 reports keep; Spearman is NaN (so the check fails) with
    NaN/inf scores or fewer than ``min_images`` images."""
    rho = stats.spearman_images
    if stats.n_nonfinite or stats.n_images < min_images or rho is None:
        rho = math.nan
    return {
        "n_images": stats.n_images,
        "n_crops": stats.n_crops,
        "spearman": rho,
        "max_abs": stats.max_abs_crop,
        "mean_abs": stats.mean_abs_crop,
        "n_nonfinite": stats.n_nonfinite,
        "worst_image": f"{stats.worst_image} (max |d| {stats.worst_image_max:.3e})",
    }


def spearman_problems(n_nonfinite: int, spearman: float, min_spearman: float) -> list[str]:
    """Why a verification fails: NaN/inf scores first, else Spearman below the minimum."""
    if n_nonfinite:
        return [nonfinite_problem(n_nonfinite)]
    bound = Bound(min_spearman, at_least=True)
    return [] if bound.ok(spearman) else [bound.problem("Spearman", spearman)]
