"""The metadata record that travels with LoDa weights (checkpoints, ONNX files, engines).

A LoDa checkpoint is one ``.safetensors`` file: every tensor of the model (both backbones
included, so nothing needs the network later) plus this record, stored as JSON under the
safetensors metadata key ``loda``. The record holds:

- ``schema_version``: :data:`SCHEMA_VERSION`; other versions are refused.
- ``model``: the :class:`~loda.config.LoDaConfig`.
- ``preprocess``: the :class:`~loda.preprocess.PreprocessConfig` (resize rule, crop size,
  crop count and layout, mean/std).
- ``calibration`` (optional): the 4-parameter logistic that maps raw scores to a dataset's MOS
  scale, the dataset and its MOS range.
- ``provenance``: data, split, SRCC/PLCC, package version, git commit when known, creation
  time, where the weights came from.

This module needs neither torch nor timm: the runtime reads the record with it.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import LoDaConfig
from .errors import CheckpointError
from .metrics import LogisticFit
from .preprocess import PreprocessConfig

__all__ = [
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "Calibration",
    "CheckpointMeta",
    "git_commit",
    "package_version",
    "read_safetensors_metadata",
]

SCHEMA_VERSION = 1
METADATA_KEY = "loda"


@dataclass(frozen=True)
class Calibration:
    """Maps raw LoDa scores onto a dataset's MOS scale (higher is better)."""

    fit: LogisticFit
    dataset: str
    mos_range: tuple[float, float]

    def __call__(self, scores):
        return self.fit(scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit": self.fit.to_dict(),
            "dataset": self.dataset,
            "mos_range": [float(self.mos_range[0]), float(self.mos_range[1])],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        _require_keys(d, {"fit", "dataset", "mos_range"}, "calibration")
        lo, hi = (float(v) for v in d["mos_range"])
        return cls(
            fit=LogisticFit.from_dict(d["fit"]), dataset=str(d["dataset"]), mos_range=(lo, hi)
        )


@dataclass(frozen=True)
class CheckpointMeta:
    model: LoDaConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    calibration: Calibration | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "provenance": self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> CheckpointMeta:
        if not isinstance(d, dict):
            raise CheckpointError(f"LoDa metadata must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CheckpointError(
                f"LoDa metadata schema version {version!r} is not supported "
                f"(this loda reads version {SCHEMA_VERSION})"
            )
        _require_keys(
            d, {"schema_version", "model", "preprocess", "calibration", "provenance"}, "metadata"
        )
        try:
            calibration = d["calibration"]
            return cls(
                model=LoDaConfig.from_dict(d["model"]),
                preprocess=PreprocessConfig.from_dict(d["preprocess"]),
                calibration=None if calibration is None else Calibration.from_dict(calibration),
                provenance=dict(d["provenance"] or {}),
                schema_version=version,
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"malformed LoDa metadata: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"LoDa metadata is not valid JSON: {exc}") from None
        return cls.from_dict(d)


def _require_keys(d: Any, keys: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise CheckpointError(f"{what} must be a JSON object")
    missing = sorted(keys - set(d))
    unknown = sorted(set(d) - keys)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise CheckpointError(f"malformed LoDa {what}: {'; '.join(parts)}")


def read_safetensors_metadata(path: str | os.PathLike) -> tuple[CheckpointMeta, dict[str, str]]:
    """Read and validate the LoDa record of a checkpoint without loading any tensor.

    Parses the safetensors header directly (8-byte little-endian length, then JSON), so it
    needs no torch and refuses non-safetensors files with one line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n <= 1 or n > min(size - 8, 100 * 1024 * 1024):
            raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not an object)")
    file_meta = header.get("__metadata__") or {}
    if METADATA_KEY not in file_meta:
        raise CheckpointError(f"{path} is not a LoDa checkpoint (no '{METADATA_KEY}' metadata)")
    return CheckpointMeta.from_json(file_meta[METADATA_KEY]), file_meta


def package_version() -> str:
    from . import __version__

    return __version__


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
