#!/usr/bin/env python3
"""Pack what the GPU check needs: demo images, a small trained checkpoint, the loda wheel.

The GPU machine has no network, neither scikit-image nor scikit-learn (whose bundled
photographs the demo set is made from), and this project is not installed there; only the
repository copy travels (64 MiB at most). Run this HERE, before sending; it writes
``out/gpu_bundle/``::

    manifest.json          format, source, selection rule, one entry per image (file, mos, ref),
                           the checkpoint record, the wheels
    images/<name>          the demo set's files, byte for byte (PNG as the demo set has them)
    model.safetensors      optional: a trained checkpoint (``--checkpoint``), copied as is
    wheels/                loda's wheel (``pip wheel --no-deps``, built from a clean copy of the
                           package folders) and the small dependencies the check needs that the
                           machine may lack (click, tqdm, safetensors, onnxslim: the versions
                           installed here, for CPython 3.12 on x86-64 Linux), which
                           ``bench/gpu_check.sh`` installs there offline

Images: ``--n`` (default 40) rows spread evenly over the demo CSV (``path,mos,ref``, columns by
name), so every reference, distortion and level is represented. The bundle is refused above
``--max-mb`` (default 16).

``out/gpu_bundle`` lies under the git-ignored ``out/``: name it in the device tool's ``carry``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loda.compare import spread_indices  # noqa: E402  (the tree's loda, as below)

BUNDLE_FORMAT = "loda-gpu-bundle/1"
MAX_CHECKPOINT_BYTES = 32 * 2**20
# Dependencies of the check the GPU machine is not promised to have (small; torch, onnx and
# onnxruntime are there and never shipped). Downloaded at the versions installed here.
SHIPPED_DEPENDENCIES = ("click", "tqdm", "safetensors", "onnxslim")
# What the wheel is built from (pyproject's package-dir), copied without caches or build output.
PACKAGE_FILES = ("pyproject.toml", "README.md", "loda", "export", "calib", "runtime")
GPU_PYTHON = ("--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:")
GPU_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


class BundleError(Exception):
    pass


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0] or "mos" not in rows[0]:
        raise BundleError(f"{csv_path} needs 'path' and 'mos' columns")
    return rows


def checkpoint_record(path: Path, out_dir: Path) -> dict:
    """Copy a LoDa checkpoint (read once with the package's loader, so a bad file fails here)."""
    from loda.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > MAX_CHECKPOINT_BYTES:
        raise BundleError(
            f"{path} holds {size / 2**20:.0f} MiB of tensors; the bundle takes checkpoints up to "
            f"{MAX_CHECKPOINT_BYTES // 2**20} MiB (loda_micro / loda_tiny, not loda_b16)"
        )
    shutil.copyfile(path, out_dir / "model.safetensors")
    return {
        "file": "model.safetensors",
        "source": str(path),
        "config": meta.model.to_dict(),
        "preprocess": meta.preprocess.to_dict(),
        "provenance": meta.provenance,
        "tensor_bytes": size,
    }


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BundleError(f"pip {args[0]} failed: {tail[0]}")


def build_loda_wheel(dest: Path) -> Path:
    """``pip wheel --no-deps`` of the package, from a clean copy (a stale ``build/`` in the
    tree could add deleted modules to the wheel); no build isolation when setuptools is here."""
    import importlib.util

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loda_wheel_") as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
        for name in PACKAGE_FILES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, src / name, ignore=ignore)
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(REPO / name, src / name)
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
        _pip("wheel", "--no-deps", *isolation, "-w", str(dest), str(src))
    wheels = sorted(dest.glob("loda-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"expected one loda wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def download_dependencies(dest: Path) -> list[str]:
    """The :data:`SHIPPED_DEPENDENCIES` wheels, pinned to the versions installed here."""
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in SHIPPED_DEPENDENCIES]
    platforms = [arg for p in GPU_PLATFORMS for arg in ("--platform", p)]
    _pip("download", "--no-deps", *GPU_PYTHON, *platforms, "-d", str(dest), *pins)
    return pins


def make_bundle(
    demo_dir: Path,
    out_dir: Path,
    n: int,
    checkpoint: Path | None,
    max_mb: float,
    *,
    download: bool = True,
) -> dict:
    """Write the bundle; ``download=False`` ships the loda wheel alone (no network)."""
    csv_path = demo_dir / "demo.csv"
    if not csv_path.is_file():
        raise BundleError(f"no demo set at {demo_dir} (make it with: loda-data demo {demo_dir})")
    rows = read_rows(csv_path)
    picked = [rows[i] for i in spread_indices(len(rows), n)]
    if out_dir.exists():
        old = out_dir / "manifest.json"
        ours = old.is_file() and json.loads(old.read_text(encoding="utf-8")).get("format") == (
            BUNDLE_FORMAT
        )
        if not ours and any(out_dir.iterdir()):
            raise BundleError(f"{out_dir} exists and is not a GPU bundle; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gpu_bundle_", dir=out_dir.parent))
    try:
        (work / "images").mkdir()
        entries = []
        for row in picked:
            src = csv_path.parent / row["path"]
            if not src.is_file():
                raise BundleError(f"{csv_path} names {row['path']}, which does not exist")
            dst = work / "images" / src.name
            shutil.copyfile(src, dst)
            entries.append(
                {"file": f"images/{src.name}", "mos": float(row["mos"]), "ref": row.get("ref")}
            )
        dataset = {}
        if (demo_dir / "dataset.json").is_file():
            dataset = json.loads((demo_dir / "dataset.json").read_text(encoding="utf-8"))
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": str(csv_path),
            "dataset": dataset.get("name"),
            "mos_rule": dataset.get("rule"),
            "selection": f"{len(entries)} of {len(rows)} rows, evenly spaced in CSV order",
            "images": entries,
            "checkpoint": checkpoint_record(checkpoint, work) if checkpoint else None,
            "wheels": [build_loda_wheel(work / "wheels").name],
        }
        if download:
            manifest["dependencies"] = download_dependencies(work / "wheels")
            manifest["wheels"] = sorted(p.name for p in (work / "wheels").glob("*.whl"))
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        total = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        if total > max_mb * 2**20:
            raise BundleError(f"bundle would be {total / 2**20:.1f} MiB, over --max-mb {max_mb}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work)
    manifest["bytes"] = total
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default=str(REPO / "out" / "demoset"), help="demo set directory")
    p.add_argument("--out", default=str(REPO / "out" / "gpu_bundle"))
    p.add_argument("--n", type=int, default=40, help="number of images (default 40)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a small trained LoDa .safetensors to include (e.g. make demo's "
        "out/demo/train/model.safetensors)",
    )
    p.add_argument("--max-mb", type=float, default=16.0)
    p.add_argument(
        "--no-download",
        action="store_true",
        help="ship only the loda wheel (no PyPI): the GPU machine must have "
        + ", ".join(SHIPPED_DEPENDENCIES),
    )
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    try:
        manifest = make_bundle(
            Path(args.demo),
            Path(args.out),
            args.n,
            Path(args.checkpoint) if args.checkpoint else None,
            args.max_mb,
            download=not args.no_download,
        )
    except BundleError as exc:
        print(f"gpu_bundle: {exc}", file=sys.stderr)
        return 1
    ckpt = manifest["checkpoint"]
    print(
        f"wrote {args.out}: {len(manifest['images'])} images"
        + (f" + {ckpt['config']['name']} checkpoint" if ckpt else "")
        + f", {len(manifest['wheels'])} wheels, {manifest['bytes'] / 2**20:.1f} MiB; next: "
        "bash bench/gpu_check.sh "
        "(on the GPU machine; carry out/gpu_bundle)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
