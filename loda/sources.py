"""What every image reader of the project shares: the image and archive suffixes, and the
MOS manifest ``loda-data pack`` writes beside an archive. Torch-free (the runtime imports it);
the image sets for calibration and verification are in :mod:`loda.data.images`.
"""

from __future__ import annotations

from pathlib import Path

from loda.artifacts import ArtifactError

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "is_archive_name",
    "is_image_name",
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


def is_archive_name(name: str) -> bool:
    """True when ``name`` ends with an archive suffix (case-insensitive)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with an image suffix (case-insensitive)."""
    return name.lower().endswith(_IMAGE_SUFFIX_TUPLE)


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
