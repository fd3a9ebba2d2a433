"""Synthetic training images for the demo set: new distortions of the TRAINING references.

The demo set has 15 reference photos; a split trains on 12 of them, so a model that learns
from random-init backbones sees very little content and fits it (training loss far below
the held-out one). ``loda-train --synthetic-per-ref N`` adds, for every reference of the
training split and only those, N freshly made images labelled by the demo set's own
full-reference rule (:func:`loda.data.demo.pseudo_mos`), as KADIS-700k does for KADID-10k:

1. content: the prepared reference (``DIR/references/<ref>.png``) is changed into a new
   reference: a random crop with the same aspect ratio (side 45-100 % of the image) resized
   back with Pillow's bicubic filter, a horizontal flip (p = 0.5), a random permutation of
   the RGB channels (p = 0.5), and a gamma in [0.7, 1.4];
2. distortion: one of the demo set's eight (:data:`loda.data.demo.DISTORTIONS_BY_VALUE`,
   colour-only ones skipped for grey content) at a CONTINUOUS level drawn uniformly from
   [0.6, 5.4]: its parameter is interpolated linearly between the two neighbouring levels of
   :data:`loda.data.demo.DISTORTION_LEVELS` (extended linearly past levels 1 and 5) and kept
   in its valid range (:data:`_LIMITS`);
3. label: ``pseudo_mos(new reference, distorted image)``: the rule of the test images.

Each image draws from ``numpy.random.default_rng([seed, crc32(ref), k])``, so the set is
reproducible, and an image does not depend on the other references or on N. No held-out
reference is ever read: the caller passes the references of the training split, and
:func:`synthesize_training_set` refuses a reference that is not in the demo set.

Files: ``OUT/images/<ref>_<k>_<distortion>.png`` (PNG, lossless), ``OUT/synthetic.csv``
(``path,mos,ref``, the generic CSV layout) and ``OUT/synthetic.json`` (what was made; a later
run with the same settings reuses the files). About 0.08 s and 0.2 MB per image on this
project's 2-core machine.
"""

from __future__ import annotations

import csv
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loda.data.datasets import DatasetError, Sample, read_csv_dataset
from loda.data.demo import (
    COLOR_ONLY,
    DISTORTION_LEVELS,
    DISTORTIONS_BY_VALUE,
    META_NAME,
    MOS_RULE,
    DemoDataError,
    _is_gray,
    _to_uint8,
    _write_png,
    is_demo_dir,
    pseudo_mos,
)
from loda.preprocess import decode_image

__all__ = [
    "LEVEL_RANGE",
    "SyntheticImage",
    "distortion_value",
    "synthesize",
    "synthesize_training_set",
]

FORMAT = 1
LEVEL_RANGE = (0.6, 5.4)
CROP_SIDE = (0.45, 1.0)
GAMMA = (0.7, 1.4)
MANIFEST = "synthetic.json"
CSV_FILE = "synthetic.csv"

#: valid range of each parameter (a level past 5 must not make a negative saturation, a JPEG
#: quality below 1 or fewer than 2 quantisation levels).
_LIMITS: dict[str, tuple[float, float]] = {
    "blur": (0.1, 50.0),
    "noise": (0.5, 128.0),
    "jpeg": (1, 95),
    "contrast": (0.05, 1.0),
    "saturation": (0.0, 1.0),
    "pixelate": (1.0, 32.0),
    "motion": (2, 64),
    "quantize": (2, 128),
}


def distortion_value(name: str, level: float) -> float:
    """The parameter of distortion ``name`` at a continuous ``level`` (integer levels give
    exactly the demo set's values)."""
    values = DISTORTION_LEVELS[name][1]
    lower = int(np.clip(np.floor(level), 1, len(values) - 1))
    a, b = float(values[lower - 1]), float(values[lower])
    lo, hi = _LIMITS[name]
    return float(np.clip(a + (b - a) * (level - lower), lo, hi))


@dataclass(frozen=True)
class SyntheticImage:
    ref: str
    index: int
    distortion: str
    level: float
    value: float  # the distortion's parameter (DISTORTION_LEVELS[distortion][0])
    mos: float
    image: np.ndarray  # HxWx3 uint8

    @property
    def name(self) -> str:
        return f"images/{self.ref}_{self.index:03d}_{self.distortion}.png"


def _new_content(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = ref.shape[:2]
    side = rng.uniform(*CROP_SIDE)
    cw, ch = max(1, int(w * side)), max(1, int(h * side))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(ref).crop((x0, y0, x0 + cw, y0 + ch))
    x = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = x[..., rng.permutation(3)]
    x = 255.0 * (x / 255.0) ** rng.uniform(*GAMMA)
    return np.ascontiguousarray(_to_uint8(x))


def synthesize(ref_id: str, reference: np.ndarray, index: int, seed: int) -> SyntheticImage:
    """Image ``index`` made from ``reference`` (see the module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(ref_id.encode()), index])
    content = _new_content(reference, rng)
    names = [n for n in DISTORTIONS_BY_VALUE if not (n in COLOR_ONLY and _is_gray(content))]
    name = names[int(rng.integers(len(names)))]
    level = float(rng.uniform(*LEVEL_RANGE))
    value = distortion_value(name, level)
    image = DISTORTIONS_BY_VALUE[name](content, value, rng)
    return SyntheticImage(ref_id, index, name, level, value, pseudo_mos(content, image), image)


def _read_reference(demo_root: Path, ref: str) -> np.ndarray:
    path = demo_root / "references" / f"{ref}.png"
    if not path.is_file():
        raise DemoDataError(f"{path}: reference {ref!r} is missing from the demo set")
    return decode_image(path)


def _manifest(refs: Sequence[str], per_ref: int, seed: int) -> dict:
    return {
        "format": FORMAT,
        "what": "synthetic training images of the demo set (loda.data.synthetic)",
        "refs": list(refs),
        "per_ref": per_ref,
        "seed": seed,
        "level_range": list(LEVEL_RANGE),
        "crop_side": list(CROP_SIDE),
        "gamma": list(GAMMA),
        "rule": MOS_RULE,
    }


def _samples(out: Path) -> list[Sample]:
    """The samples of ``out``'s CSV, read by the generic CSV reader (which checks the files)."""
    return list(read_csv_dataset(out / CSV_FILE).samples)


def _reuse(out: Path, manifest: dict) -> list[Sample] | None:
    try:
        old = json.loads((out / MANIFEST).read_text())
        if {k: old.get(k) for k in manifest} != manifest:
            return None
        samples = _samples(out)
    except (OSError, ValueError, DatasetError):
        return None
    if len(samples) != len(manifest["refs"]) * manifest["per_ref"]:
        return None
    return samples


def synthesize_training_set(
    demo_root: str | os.PathLike[str],
    refs: Iterable[str],
    out_dir: str | os.PathLike[str],
    per_ref: int,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[Sample]:
    """Make ``per_ref`` images of each reference in ``refs`` under ``out_dir``; their samples.

    ``demo_root`` is a demo set made by ``loda-data demo``; ``refs`` are the references of the
    training split (only those are read). Files of an earlier identical call are reused.
    """
    root, out = Path(demo_root), Path(out_dir)
    refs = sorted(set(refs))
    if per_ref <= 0:
        raise DemoDataError(f"synthetic images per reference must be positive, got {per_ref}")
    if not is_demo_dir(root):
        raise DemoDataError(
            f"{root}: synthetic training images need the demo set (made by loda-data demo, "
            f"with {META_NAME} and references/); this is not one"
        )
    meta = json.loads((root / META_NAME).read_text(encoding="utf-8"))
    known = {r["id"] for r in meta.get("references", [])}
    unknown = [r for r in refs if r not in known]
    if unknown:
        raise DemoDataError(f"{root}: not references of this demo set: {', '.join(unknown)}")
    manifest = _manifest(refs, per_ref, seed)
    reused = _reuse(out, manifest)
    if reused is not None:
        if log:
            log(f"reusing {len(reused)} synthetic training images in {out}")
        return reused
    start = time.perf_counter()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / CSV_FILE).unlink(missing_ok=True)  # an interrupted run must not look complete
    rows = []
    for ref in refs:
        reference = _read_reference(root, ref)
        for k in range(per_ref):
            item = synthesize(ref, reference, k, seed)
            _write_png(item.image, out / item.name)
            rows.append({"path": item.name, "mos": f"{item.mos:.4f}", "ref": ref})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    with open(out / CSV_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "mos", "ref"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if log:
        log(
            f"made {len(rows)} synthetic training images ({per_ref} per training reference x "
            f"{len(refs)}) in {out} in {time.perf_counter() - start:.0f} s"
        )
    return _samples(out)
