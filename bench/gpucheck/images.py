"""Which images the check scores: a bundle, a demo set, a folder, or generated stand-ins."""

from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loda.compare import spread_indices

from . import BUNDLE_FORMAT
from .common import first_line, log, module_available

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "out" / "gpu_bundle"
DEFAULT_DEMOSET = REPO / "out" / "demoset"


@dataclass
class ImageSet:
    source: str  # "bundle" | "demoset" | "demoset-built" | "folder" | "generated"
    detail: str
    paths: list[Path]
    mos: list[float | None]
    refs: list[str | None]
    root: Path | None = None  # the bundle directory when source == "bundle"


def images_from_csv(csv_path: Path, n: int) -> tuple[list[Path], list[float | None], list]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{csv_path} has no 'path' column")
    rows = [rows[i] for i in spread_indices(len(rows), n)]
    paths = [csv_path.parent / row["path"] for row in rows]
    mos = [float(row["mos"]) if row.get("mos") not in (None, "") else None for row in rows]
    refs = [row.get("ref") or None for row in rows]
    return paths, mos, refs


def read_manifest(bundle: Path) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{bundle}/manifest.json is not a {BUNDLE_FORMAT} manifest")
    return manifest


def images_from_bundle(bundle: Path, n: int) -> ImageSet:
    manifest = read_manifest(bundle)
    entries = manifest["images"]
    entries = [entries[i] for i in spread_indices(len(entries), n)]
    paths = [bundle / e["file"] for e in entries]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"bundle files missing: {', '.join(missing[:3])}")
    return ImageSet(
        "bundle",
        f"{bundle} ({manifest.get('selection', '')}; from {manifest.get('source', '?')})",
        paths,
        [e.get("mos") for e in entries],
        [e.get("ref") for e in entries],
        root=bundle,
    )


def generate_images(out_dir: Path, n: int, seed: int = 0) -> ImageSet:
    """Procedural stand-ins (:mod:`loda.data.generated`). Never used silently: the report says
    'generated'."""
    from loda.data.generated import DESCRIPTION
    from loda.data.generated import generate_images as generate

    paths = generate(out_dir, n, seed)
    return ImageSet("generated", f"{n} {DESCRIPTION} in {out_dir}", paths, [None] * n, [None] * n)


def _from_folder(folder: Path, n: int) -> ImageSet:
    if (folder / "manifest.json").is_file():
        return images_from_bundle(folder, n)
    if (folder / "demo.csv").is_file():
        paths, mos, refs = images_from_csv(folder / "demo.csv", n)
        return ImageSet("demoset", str(folder), paths, mos, refs)
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            files = [files[i] for i in spread_indices(len(files), n)]
            return ImageSet("folder", str(folder), files, [None] * len(files), [None] * len(files))
    raise ValueError(f"--images {folder}: no manifest.json, demo.csv or image files")


def _build_demo_set(tmp: Path, n: int, notes: list[str]) -> ImageSet | None:
    missing = [m for m in ("scipy", "skimage", "sklearn") if not module_available(m)]
    if missing:
        notes.append(
            f"loda.data.demo cannot build the demo set here ({', '.join(missing)} missing)"
        )
        return None
    try:
        from loda.data.demo import make_demo_set

        log("building the demo set (30-40 s)")
        csv_path = make_demo_set(tmp / "demoset", seed=0)
        paths, mos, refs = images_from_csv(Path(csv_path), n)
        return ImageSet("demoset-built", str(csv_path), paths, mos, refs)
    except Exception as exc:
        notes.append(f"building the demo set failed: {first_line(exc)}")
        return None


def find_images(args: argparse.Namespace, budget_left: float, tmp: Path) -> tuple[ImageSet, list]:
    """The image set, and notes on what was tried before it: ``--images``, else the bundle,
    else the demo set, else a demo set built here (when it fits the budget), else generated."""
    notes: list[str] = []
    n = args.n_images
    if args.images:
        return _from_folder(Path(args.images), n), notes
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        try:
            return images_from_bundle(DEFAULT_BUNDLE, n), notes
        except Exception as exc:
            notes.append(f"bundle {DEFAULT_BUNDLE} unusable: {first_line(exc)}")
    else:
        notes.append(f"no bundle at {DEFAULT_BUNDLE} (make it with bench/gpu_bundle.sh)")
    if (DEFAULT_DEMOSET / "demo.csv").is_file():
        try:
            paths, mos, refs = images_from_csv(DEFAULT_DEMOSET / "demo.csv", n)
            if all(p.is_file() for p in paths):
                return ImageSet("demoset", str(DEFAULT_DEMOSET), paths, mos, refs), notes
            notes.append(f"demo set {DEFAULT_DEMOSET} has missing files")
        except Exception as exc:
            notes.append(f"demo set {DEFAULT_DEMOSET} unusable: {first_line(exc)}")
    else:
        notes.append(f"no demo set at {DEFAULT_DEMOSET}")
    if args.smoke:
        notes.append("smoke mode does not build the demo set (30-40 s)")
    elif budget_left < 300:
        notes.append("not enough budget left to build the demo set")
    elif built := _build_demo_set(tmp, n, notes):
        return built, notes
    return generate_images(tmp / "generated", n), notes


# Decode workers: top level, so spawned processes can unpickle them.


def decode_one(path: str) -> int:
    from loda.preprocess import preprocess_image

    return int(preprocess_image(path).shape[0])


def pid_of_worker(_: Any) -> int:
    return os.getpid()
