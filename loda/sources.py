"""Image sources for calibration and verification: a folder, an archive, one image, or the
built-in demo set, read as real photographs (never random tensors), and the suffixes every image
reader of the project shares.
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

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEMO_REFERENCES",
    "IMAGE_SUFFIXES",
    "VerificationImages",
    "is_archive_name",
    "is_image_name",
    "load_verification_images",
    "manifest_path",
    "read_manifest_mos",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
ARCHIVE_SUFFIXES: tuple[str, ...] = (
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
)
_IMAGE_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))
DEMO_REFERENCES = 8

Log = Callable[[str], None]


def is_archive_name(name: str) -> bool:
    """True when ``name`` ends with an archive suffix (case-insensitive)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with an image suffix (case-insensitive)."""
    return name.lower().endswith(_IMAGE_SUFFIX_TUPLE)


@dataclass(frozen=True)
class VerificationImages:
    """Where the verification crops came from and the crops, one uint8 NHWC stack per image."""

    source: str
    names: tuple[str, ...]
    crops: tuple[np.ndarray, ...]

    @property
    def n_crops(self) -> int:
        return sum(len(c) for c in self.crops)


def _is_archive(path: Path) -> bool:
    return path.is_file() and is_archive_name(path.name)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and is_image_name(base)


def _read_archive(path: Path, n_images: int) -> list[tuple[str, bytes]]:
    """``n_images`` image members of a zip or tar archive (spread over the sorted names)."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = sorted(
                    i.filename
                    for i in zf.infolist()
                    if not i.is_dir() and _is_image_name(i.filename)
                )
                chosen = [names[i] for i in spread_indices(len(names), n_images)]
                return [(name, zf.read(name)) for name in chosen]
        with tarfile.open(path) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and _is_image_name(m.name)),
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


def _folder_images(root: Path) -> list[Path]:
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
            paths = _folder_images(csv_path.parent)
            chosen = [paths[i] for i in spread_indices(len(paths), n_images)]
            crops = tuple(preprocess_image(p, cfg) for p in chosen)
            names = tuple(p.relative_to(csv_path.parent).as_posix() for p in chosen)
            return VerificationImages("built-in demo set", names, crops)
    root = Path(images)
    if _is_archive(root):
        members = _read_archive(root, n_images)
        if not members:
            raise ArtifactError(
                f"no images in archive {root} ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        crops = tuple(preprocess_image(data, cfg) for _, data in members)
        return VerificationImages(str(root), tuple(name for name, _ in members), crops)
    if root.is_dir():
        paths = _folder_images(root)
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


def manifest_path(archive: Path) -> Path:
    """The manifest ``loda-data pack`` writes beside an archive: ``ARCHIVE.csv``."""
    return archive.with_name(archive.name + ".csv")


def read_manifest_mos(archive: Path) -> dict[str, float]:
    """member name -> MOS from the manifest beside ``archive`` (empty when there is none).

    Sources are ``PATH::member`` with PATH the archive as it was named to ``loda-data pack``,
    so members are found after the archive's file name and ``::``.
    """
    import csv

    manifest = manifest_path(archive)
    if not manifest.is_file():
        return {}
    marker = f"{archive.name}::"
    out = {}
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            source, mos = row.get("source") or "", row.get("mos")
            at = source.find(marker)
            if at >= 0 and mos:
                try:
                    out[source[at + len(marker) :]] = float(mos)
                except ValueError:
                    raise ArtifactError(f"{manifest}: mos {mos!r} is not a number") from None
    return out
