"""Image sets for calibration and verification: a folder, an archive, one image, or the
built-in demo set, read as real photographs (never random tensors), spread evenly over the
sorted candidates.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loda.artifacts import ArtifactError
from loda.compare import spread_indices
from loda.preprocess import PreprocessConfig
from loda.sources import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, is_archive_name, is_image_name

__all__ = [
    "DEMO_REFERENCES",
    "VerificationImages",
    "archive_images",
    "folder_images",
    "is_archive_file",
    "load_verification_images",
]

DEMO_REFERENCES = 8

Log = Callable[[str], None]


@dataclass(frozen=True)
class VerificationImages:
    """Where the verification crops came from and the crops, one uint8 NHWC stack per image."""

    source: str
    names: tuple[str, ...]
    crops: tuple[np.ndarray, ...]

    @property
    def n_crops(self) -> int:
        return sum(len(c) for c in self.crops)


def is_archive_file(path: Path) -> bool:
    return path.is_file() and is_archive_name(path.name)


def _is_image_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and is_image_name(base)


def archive_images(path: Path, n_images: int) -> list[tuple[str, bytes]]:
    """``n_images`` image members of a zip or tar archive (spread over the sorted names)."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = sorted(
                    i.filename
                    for i in zf.infolist()
                    if not i.is_dir() and _is_image_member(i.filename)
                )
                chosen = [names[i] for i in spread_indices(len(names), n_images)]
                return [(name, zf.read(name)) for name in chosen]
        with tarfile.open(path) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and _is_image_member(m.name)),
                key=lambda m: m.name,
            )
            out = []
            for i in spread_indices(len(members), n_images):
                f = tf.extractfile(members[i])
                if f is not None:
                    out.append((members[i].name, f.read()))
            return out
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"cannot read image archive {path}: {exc}") from None


def folder_images(root: Path) -> list[Path]:
    from loda.data.demo import CSV_NAME, is_demo_dir

    if is_demo_dir(root) and (root / CSV_NAME).is_file():
        from loda.data.datasets import read_dataset

        return [s.path for s in read_dataset("csv", root / CSV_NAME).samples]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def load_verification_images(
    images: str | os.PathLike | None,
    n_images: int,
    cfg: PreprocessConfig,
    *,
    log: Log | None = None,
) -> VerificationImages:
    """Crops of ``n_images`` real images, spread evenly over the sorted candidates.

    ``images``: a folder (searched recursively; a demo set folder is read through its CSV), an
    archive (zip or tar), or ``None`` for the built-in demo set (``DEMO_REFERENCES`` reference
    photographs with their distortions, made in a temporary directory), or, when the demo
    photographs are not installed, generated images (:mod:`loda.data.generated`; the source says so).
    """
    from loda.preprocess import preprocess_image

    if n_images < 1:
        raise ArtifactError(f"verification needs at least 1 image, got {n_images}")
    log = log or (lambda _m: None)
    if images is None:
        from loda.data.demo import list_references, make_demo_set

        with tempfile.TemporaryDirectory(prefix="loda-verify-") as tmp:
            refs = list_references()[:DEMO_REFERENCES]
            if not refs:
                from loda.data.generated import DESCRIPTION, generate_images

                log(
                    "no --images and no demo reference photos (pip install 'loda[demo]'): "
                    f"verifying on {n_images} generated images"
                )
                paths = generate_images(Path(tmp), n_images)
                crops = tuple(preprocess_image(p, cfg) for p in paths)
                names = tuple(p.name for p in paths)
                return VerificationImages(f"generated: {DESCRIPTION}", names, crops)
            log(f"making the built-in demo set ({len(refs)} references) for verification")
            csv_path = make_demo_set(Path(tmp) / "demo", references=refs)
            paths = folder_images(csv_path.parent)
            chosen = [paths[i] for i in spread_indices(len(paths), n_images)]
            crops = tuple(preprocess_image(p, cfg) for p in chosen)
            names = tuple(p.relative_to(csv_path.parent).as_posix() for p in chosen)
            return VerificationImages("built-in demo set", names, crops)
    root = Path(images)
    if is_archive_file(root):
        members = archive_images(root, n_images)
        if not members:
            raise ArtifactError(
                f"no images in archive {root} ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        crops = tuple(preprocess_image(data, cfg) for _, data in members)
        return VerificationImages(str(root), tuple(name for name, _ in members), crops)
    if root.is_dir():
        paths = folder_images(root)
        if not paths:
            raise ArtifactError(
                f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        chosen = [paths[i] for i in spread_indices(len(paths), n_images)]
        names = tuple(
            p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in chosen
        )
        return VerificationImages(str(root), names, tuple(preprocess_image(p, cfg) for p in chosen))
    if root.is_file() and root.suffix.lower() in IMAGE_SUFFIXES:
        return VerificationImages(str(root), (root.name,), (preprocess_image(root, cfg),))
    raise ArtifactError(
        f"--images {root}: not a folder, an image or an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )
