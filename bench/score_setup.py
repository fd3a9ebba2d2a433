"""bench_score.py's inputs: the image formats, the benchmark images and tars, the models.

Images: the demo set's reference photographs (:mod:`loda.data.demo`) fitted to each format's
size. Models: a checkpoint and its FP32 ONNX export, given or made (random init) and reused
while their inputs are unchanged (``_common.Artifacts``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
from _common import Artifacts, BenchError


@dataclass(frozen=True)
class ImageFormat:
    """One benchmark image format; this table drives the image sets and the decode table."""

    name: str
    label: str
    size: tuple[int, int]  # width, height
    suffix: str
    save: tuple[tuple[str, Any], ...]


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("jpeg", "JPEG 1024x768", (1024, 768), ".jpg", (("quality", 90),)),
    ImageFormat("png", "PNG 512x384", (512, 384), ".png", ()),
)
SCORED_FORMAT = FORMATS[0]  # what the throughput and memory parts score (KonIQ's size)


@dataclass(frozen=True)
class Model:
    config: str
    checkpoint: Path | None  # None: only the ONNX file was given (memory part)
    onnx: Path
    source: str  # provenance of the weights
    preprocess: Any  # loda.preprocess.PreprocessConfig
    precision: str = "fp32"  # of the ONNX graph (loda.precision)


def model_from_onnx(path: Path) -> Model:
    """A model known only by its ONNX file (its LoDa record travels in the metadata)."""
    import onnx

    from loda.artifacts import read_onnx_metadata
    from loda.metadata import CheckpointMeta

    if not path.is_file():
        raise BenchError(f"no ONNX file at {path}")
    record = read_onnx_metadata(onnx.load(str(path), load_external_data=False)).get("loda")
    if not record:
        raise BenchError(f"{path} carries no LoDa metadata: not a loda-export file")
    meta = CheckpointMeta.from_json(record)
    return Model(meta.model.name, None, path, meta.provenance.get("source", "?"), meta.preprocess)


def _export(checkpoint: Path, onnx_path: Path) -> None:
    from loda.export.onnx import export_onnx

    # Not verified against PyTorch here: the throughput part compares every way's scores with
    # the PyTorch loop's on the benchmark images instead.
    export_onnx(checkpoint, onnx_path, verify=False)


def ensure_model(
    artifacts: Artifacts,
    folder: Path,
    config: str,
    seed: int,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    precisions: Sequence[str] = ("fp32",),
) -> Model:
    """A checkpoint and its FP32 ONNX export (or, given, a graph of one of ``precisions``):
    given, or made (random init) in ``folder``."""
    from loda.artifacts import sha256_file
    from loda.export.onnx import DEFAULT_OPSET
    from loda.metadata import read_safetensors_metadata

    if checkpoint is not None:
        if not checkpoint.is_file():
            raise BenchError(f"no checkpoint at {checkpoint}")
        ckpt_sha = sha256_file(checkpoint)
    else:
        checkpoint = folder / f"{config}.safetensors"
        ckpt_sha = artifacts.ensure(
            checkpoint,
            {"config": config, "seed": seed, "kind": "random-init"},
            lambda: _common.make_checkpoint(config, seed, checkpoint),
        )
    meta, _ = read_safetensors_metadata(checkpoint)
    precision = "fp32"
    if onnx_path is not None:
        precision = _common.check_onnx_source(onnx_path, ckpt_sha, precisions=precisions)
    else:
        onnx_path = folder / f"{checkpoint.stem}.onnx"
        artifacts.ensure(
            onnx_path,
            {"checkpoint_sha256": ckpt_sha, "opset": DEFAULT_OPSET, "precision": "fp32"},
            lambda: _export(checkpoint, onnx_path),
        )
    return Model(
        meta.model.name,
        checkpoint,
        onnx_path,
        meta.provenance.get("source", "?"),
        meta.preprocess,
        precision,
    )


# --------------------------------------------------------------------------------------------
# Images and archives
# --------------------------------------------------------------------------------------------


def make_images(folder: Path, fmt: ImageFormat, n: int) -> list[Path]:
    """``n`` reference photographs fitted to ``fmt.size`` (cycling through the references)."""
    from PIL import Image

    from loda.data.demo import list_references, load_reference

    refs = list_references()
    if not refs:
        raise BenchError("no reference photographs: pip install 'loda[demo]' (scikit-image)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ref = refs[i % len(refs)]
        path = folder / f"{i:04d}_{ref}{fmt.suffix}"
        if not path.is_file():
            Image.fromarray(load_reference(ref, fmt.size)).save(path, **dict(fmt.save))
        paths.append(path)
    return paths


def make_tar(path: Path, files: Sequence[Path], n: int) -> Path:
    """An uncompressed tar of ``n`` members cycling through ``files`` (unique member names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            f = files[i % len(files)]
            tar.add(f, arcname=f.name if n <= len(files) else f"{i:05d}_{f.name}")
    return path


def member_key(source: str) -> str:
    """``archive.tar::0001_x.jpg`` and ``dir/0001_x.jpg`` -> ``0001_x.jpg``."""
    return Path(source.rpartition("::")[2]).name
