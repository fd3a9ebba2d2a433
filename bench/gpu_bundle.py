#!/usr/bin/env python3
"""Pack the demo images (and optionally a small trained checkpoint) that the GPU check needs.

The GPU machine has neither scikit-image nor scikit-learn (whose bundled photographs the demo set
is made from) nor safetensors, and only the source tree travels there (64 MiB at most). Run this
HERE, before sending; it writes ``out/gpu_bundle/``::

    manifest.json          format, source, selection rule, one entry per image (file, mos, ref)
    images/<name>          the demo set's files, byte for byte (PNG as the demo set has them)
    model_state.pt         optional: a trained checkpoint's tensors (torch.save of a state dict,
                           read there with torch.load(weights_only=True)); its LoDa config,
                           preprocessing record and provenance are in manifest.json

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
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUNDLE_FORMAT = "loda-gpu-bundle/1"
MAX_CHECKPOINT_BYTES = 32 * 2**20


class BundleError(Exception):
    pass


def spread_indices(total: int, n: int) -> list[int]:
    if n >= total:
        return list(range(total))
    step = (total - 1) / (n - 1) if n > 1 else 0
    return sorted({round(i * step) for i in range(n)})


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0] or "mos" not in rows[0]:
        raise BundleError(f"{csv_path} needs 'path' and 'mos' columns")
    return rows


def checkpoint_record(path: Path, out_dir: Path) -> dict:
    import torch

    from loda.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size > MAX_CHECKPOINT_BYTES:
        raise BundleError(
            f"{path} holds {size / 2**20:.0f} MiB of tensors; the bundle takes checkpoints up to "
            f"{MAX_CHECKPOINT_BYTES // 2**20} MiB (loda_micro / loda_tiny, not loda_b16)"
        )
    torch.save(state, out_dir / "model_state.pt")
    return {
        "file": "model_state.pt",
        "source": str(path),
        "config": meta.model.to_dict(),
        "preprocess": meta.preprocess.to_dict(),
        "provenance": meta.provenance,
        "tensor_bytes": size,
    }


def make_bundle(
    demo_dir: Path, out_dir: Path, n: int, checkpoint: Path | None, max_mb: float
) -> dict:
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
        }
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
        )
    except BundleError as exc:
        print(f"gpu_bundle: {exc}", file=sys.stderr)
        return 1
    ckpt = manifest["checkpoint"]
    print(
        f"wrote {args.out}: {len(manifest['images'])} images"
        + (f" + {ckpt['config']['name']} checkpoint" if ckpt else "")
        + f", {manifest['bytes'] / 2**20:.1f} MiB; next: bash bench/gpu_check.sh "
        "(on the GPU machine; carry out/gpu_bundle)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
