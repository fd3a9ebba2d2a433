"""bench_export.py's inputs: the weights, the images (calibration and benchmark, disjoint), the
FP32/FP16/INT8 graphs (made once, reused while their inputs are unchanged: ``_common.Artifacts``)
and the FLOPs per crop, counted twice."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import numpy as np
from _common import Artifacts, BenchError, log

DEMO_REFERENCES = 4  # references of the demo set built when no images are given


def weights(args: Any, artifacts: Artifacts) -> tuple[Path, str]:
    """``--checkpoint``, or a random-init one of ``--config`` made in ``--out``; its sha256."""
    from loda.artifacts import sha256_file

    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise BenchError(f"no checkpoint at {args.checkpoint}")
        return args.checkpoint, sha256_file(args.checkpoint)
    ckpt = args.out / f"{args.config}.safetensors"
    sha = artifacts.ensure(
        ckpt,
        {"config": args.config, "seed": args.seed, "kind": "random-init"},
        lambda: _common.make_checkpoint(args.config, args.seed, ckpt),
    )
    return ckpt, sha


def check_given_onnx(path: Path, checkpoint_sha: str) -> str:
    """The sha256 of ``path`` after checking that it is the FP32 export of the checkpoint."""
    from loda.artifacts import sha256_file

    _common.check_onnx_source(path, checkpoint_sha)
    log(f"using {path} (exported from this checkpoint)")
    return sha256_file(path)


def make_fp16(fp32_path: Path, path: Path) -> None:
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16

    model, report = convert_onnx_fp16(onnx.load(str(fp32_path)))
    log(f"FP16 share of GEMM FLOPs {100 * report.fp16_share:.1f}% ({report.converter})")
    onnx.save_model(model, str(path))


def make_int8(fp32_path: Path, path: Path, calib_dir: Path, n: int, target: str, method: str):
    from loda.calib.int8 import quantize_onnx_int8

    report = quantize_onnx_int8(
        fp32_path,
        path,
        images=calib_dir,
        method=method,
        target=target,
        calib_images=n,
        verify=False,  # checked against eager on the benchmark crops instead (held-out images)
    )
    log(report.summary())


def pick_images(images: Path, n_calib: int, n_bench: int) -> tuple[str, list, list]:
    """Disjoint calibration and benchmark images, both spread over the sorted candidates."""
    from loda.calib.int8 import select_images

    source, chosen, _, _ = select_images(images, n_calib=n_calib + n_bench, verify=False)
    if len(chosen) < n_bench + 1:
        raise BenchError(
            f"{images}: {len(chosen)} image(s); the benchmark needs {n_bench} for --crops and at "
            "least 1 more to calibrate INT8"
        )
    bench_idx = {round(float(i)) for i in np.linspace(0, len(chosen) - 1, n_bench)}
    held = [c for i, c in enumerate(chosen) if i in bench_idx]
    calib = [c for i, c in enumerate(chosen) if i not in bench_idx][:n_calib]
    return source, calib, held


def write_calibration_folder(calib: Sequence[Any], folder: Path) -> None:
    """Copy the calibration images into ``folder`` (so the INT8 tools read exactly these)."""
    wanted = {f"{i:03d}_{Path(c.name).name}": c for i, c in enumerate(calib)}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in wanted:
            old.unlink() if old.is_file() else shutil.rmtree(old)
    for name, image in wanted.items():
        data = image.source if isinstance(image.source, bytes) else image.source.read_bytes()
        target = folder / name
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)


def default_images(out: Path) -> Path:
    """``out/demo/data`` when ``make demo`` made it, else a small demo set in ``--out``."""
    from loda.data.demo import is_demo_dir, list_references, make_demo_set

    shared = Path("out/demo/data")
    if is_demo_dir(shared) and (shared / "demo.csv").is_file():
        return shared
    own = out / "demo"
    if is_demo_dir(own) and (own / "demo.csv").is_file():
        return own
    refs = list_references()[:DEMO_REFERENCES]
    if not refs:
        raise BenchError("no images: pass --images DIR (or pip install 'loda[demo]')")
    log(f"building a demo set of {len(refs)} references in {own} (pass --images DIR to skip)")
    make_demo_set(own, references=refs)
    return own


def make_graphs(
    args: Any, chosen: Sequence[Any], artifacts: Artifacts, ckpt: Path, ckpt_sha: str, images: Any
) -> dict[str, Path]:
    """The file of every chosen variant: the checkpoint for eager, the ONNX graphs made (or
    ``--onnx``). ``images``: (calibration source, calibration images, their folder)."""
    from loda.calib.int8 import TARGETS
    from loda.export.onnx import DEFAULT_OPSET, export_onnx

    source, calib, calib_dir = images
    stem = ckpt.stem if args.checkpoint is not None else args.config
    paths: dict[str, Path] = {"torch-fp32": ckpt}
    if args.onnx is not None:
        fp32 = paths["ort-fp32"] = args.onnx
        fp32_sha = check_given_onnx(fp32, ckpt_sha)
    else:
        fp32 = paths["ort-fp32"] = args.out / f"{stem}.onnx"
        fp32_sha = artifacts.ensure(
            fp32,
            {"checkpoint_sha256": ckpt_sha, "opset": DEFAULT_OPSET},
            lambda: export_onnx(ckpt, fp32, verify=False),
        )
    for v in chosen:
        if v.precision == "fp16":
            path = paths[v.name] = args.out / f"{stem}.fp16.onnx"
            artifacts.ensure(path, {"fp32_sha256": fp32_sha}, lambda p=path: make_fp16(fp32, p))
        elif v.precision == "int8":
            target = TARGETS[v.int8_target]
            path = paths[v.name] = args.out / f"{stem}{target.suffix}"
            inputs = {
                "fp32_sha256": fp32_sha,
                "target": v.int8_target,
                # the target's quantization settings: a changed recipe means a new graph
                "target_settings": json.loads(json.dumps(dataclasses.asdict(target), default=dict)),
                "method": args.method,
                "calibration_source": source,
                "calibration_images": [c.name for c in calib],
            }
            artifacts.ensure(
                path,
                inputs,
                lambda p=path, t=v.int8_target: make_int8(
                    fp32, p, calib_dir, len(calib), t, args.method
                ),
            )
    return paths


def _cpu_attention_formula() -> dict[Any, Any]:
    """FlopCounterMode has no formula for the CPU flash-attention kernel that
    ``scaled_dot_product_attention`` runs here, so attention would count as 0 FLOPs; give it
    torch's own SDPA formula (QK^T and PV, 2 FLOPs per multiply-add)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: formula}


def count_flops(fp32_path: Path, model: Any, crop_size: int) -> dict[str, Any]:
    """GEMM FLOPs per crop of the exported graph and torch's FLOP count of the eager model."""
    import onnx
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loda.calib.graph_stats import gemm_stats

    stats = gemm_stats(onnx.load(str(fp32_path)))
    by_type = {op: sum(v.values()) for op, v in stats.by_type().items()}
    x = torch.zeros(1, 3, crop_size, crop_size)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formula())
    with counter, torch.no_grad():
        model.score(x)
    torch_by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "graph_gemm_gflop_per_crop": stats.total_flops / 1e9,
        "graph_gemm_gflop_by_op": {k: v / 1e9 for k, v in sorted(by_type.items())},
        "graph_gemm_nodes": len(stats.nodes),
        "graph_gemm_nodes_without_shapes": list(stats.unknown),
        "torch_counter_gflop_per_crop": counter.get_total_flops() / 1e9,
        "torch_counter_gflop_by_op": {k: v / 1e9 for k, v in sorted(torch_by_op.items())},
    }
