"""The child processes: torch.compile, and TensorRT through the package's own tools.

The TensorRT worker does what a user does: a checkpoint (:func:`loda.checkpoint.save_checkpoint`)
exported by :func:`loda.export.onnx.export_onnx`, an FP16 graph by
:func:`loda.calib.fp16.convert_onnx_fp16`, engines built by :func:`loda.export.trt.build_engine`
(flavor ``tensorrt``: a data-centre GPU) and run by the runtime's
:class:`loda.runtime.trt_backend.TensorRTBackend` (uint8 crops from the host, scores back: the
copies are in the timed region, as in ``loda-score``).
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from loda.compare import compare_scores

from .common import first_line, module_available, r, write_json
from .variants import VARIANTS, Runner, backend_flags, build_model, sync, tile_batch, time_blocks


def _setup(spec: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    import torch

    return torch, torch.device(spec["device"]), np.load(spec["crops"])


def worker_compile(spec: dict[str, Any], out_path: Path) -> None:
    from loda.preprocess import normalize

    result: dict[str, Any] = {
        "status": "running",
        "variant": spec["variant"],
        "backend": spec["backend"],
        "mode": spec["mode"],
        "batches": {},
    }
    write_json(out_path, result)
    torch, device, crops = _setup(spec)
    x_all = torch.from_numpy(normalize(crops)).to(device)
    result["torch"] = torch.__version__
    model = build_model(torch, spec["config"], device, spec["seed"])
    runner = Runner(torch, model, VARIANTS[spec["variant"]], device, cache=False)

    def fwd(x: Any) -> Any:
        return runner.forward(x)

    kwargs: dict[str, Any] = {"backend": spec["backend"], "dynamic": False}
    if spec["mode"]:
        kwargs["mode"] = spec["mode"]
    compiled = torch.compile(fwd, **kwargs)
    timing = spec["timing"]
    for b in spec["batches"]:
        x = runner.prepare(tile_batch(x_all, b))
        row: dict[str, Any] = {}
        result["batches"][str(b)] = row
        try:
            with torch.no_grad(), runner.flags():
                t = time.perf_counter()
                out = compiled(x)
                sync(torch, device)
                row["first_call_s"] = r(time.perf_counter() - t, 2)
                row["max_abs_d_vs_eager"] = r(float((out - fwd(x)).abs().max()), 8)
                row.update(
                    time_blocks(torch, device, lambda x=x: compiled(x), n_items=b, cfg=timing)
                )
                eager = time_blocks(torch, device, lambda x=x: fwd(x), n_items=b, cfg=timing)
                row["eager_items_per_s_same_process"] = eager["items_per_s"]
                row["speedup_vs_eager"] = r(row["items_per_s"] / eager["items_per_s"], 3)
            row["status"] = "ok"
        except Exception as exc:
            row.update(
                status="error", error=first_line(exc), traceback=traceback.format_exc()[-1500:]
            )
        write_json(out_path, result)
    statuses = [v.get("status") for v in result["batches"].values()]
    result["status"] = "ok" if all(s == "ok" for s in statuses) else "partial"
    write_json(out_path, result)


def _graphs(torch: Any, spec: dict[str, Any], work: Path, result: dict[str, Any]):
    """The random-init model, its FP32 ONNX export and (when it converts) the FP16 graph."""
    import onnx

    from loda.checkpoint import save_checkpoint
    from loda.export.onnx import export_onnx

    model = build_model(torch, spec["config"], torch.device("cpu"), spec["seed"])
    checkpoint = work / "model.safetensors"
    save_checkpoint(model, checkpoint, provenance={"source": "gpu_check random init"})
    fold = module_available("onnxslim")
    t = time.perf_counter()
    onnx_path = work / "model.onnx"
    export_onnx(checkpoint, onnx_path, verify=False, fold=fold)
    result["exporter"] = "loda.export.onnx.export_onnx" + ("" if fold else " (onnxslim missing)")
    result["export_s"] = r(time.perf_counter() - t, 2)
    graphs = {"fp32": onnx_path}
    try:
        from loda.calib.fp16 import convert_onnx_fp16

        t = time.perf_counter()
        fp16_model, _ = convert_onnx_fp16(onnx.load(str(onnx_path)), images=None)
        graphs["fp16"] = work / "model.fp16.onnx"
        graphs["fp16"].write_bytes(fp16_model.SerializeToString())
        result["fp16_convert_s"] = r(time.perf_counter() - t, 2)
    except Exception as exc:
        result["engines"]["fp16"] = {"status": f"skipped: no FP16 graph ({first_line(exc)})"}
    return model, graphs


def _engine(
    torch: Any, spec: dict[str, Any], path: Path, crops: np.ndarray, ref: np.ndarray
) -> dict[str, Any]:
    """Build one engine, score every crop with the runtime backend, time each batch."""
    from loda.export.trt import BatchProfile, build_engine
    from loda.runtime.trt_backend import TensorRTBackend

    batches = sorted(spec["batches"])
    profile = BatchProfile(batches[0], batches[len(batches) // 2], batches[-1])
    engine_path = path.with_suffix(".engine")
    t = time.perf_counter()
    rep = build_engine(
        path, engine_path, flavor="tensorrt", profile=profile, opt_level=spec["opt_level"]
    )
    entry: dict[str, Any] = {
        "builder": "loda.export.trt.build_engine",
        "build_seconds": r(rep.build_seconds, 2),
        "total_build_s": r(time.perf_counter() - t, 2),
        "plan_mb": r(rep.plan_bytes / 1e6, 1),
        "runner": "loda.runtime.trt_backend.TensorRTBackend (host uint8 in, scores out)",
    }
    with TensorRTBackend.open(engine_path) as backend:
        scores = backend.infer(crops).astype(np.float64)
        stats = compare_scores(scores, ref, crops_per_image=spec["crops_per_image"])
        entry["parity_vs_torch_fp32"] = {
            "max_abs_d_crop": r(stats.max_abs_crop, 8),
            "max_abs_d_image": r(stats.max_abs_image, 8),
            "spearman_vs_fp32": r(stats.spearman_images),
            "nonfinite": stats.nonfinite_candidate,
        }
        entry["batches"] = {}
        device = torch.device(spec["device"])
        for b in batches:
            x = np.ascontiguousarray(np.resize(crops, (b, *crops.shape[1:])))
            row = time_blocks(
                torch, device, lambda x=x: backend.infer(x), n_items=b, cfg=spec["timing"]
            )
            entry["batches"][str(b)] = {**row, "status": "ok"}
    entry["status"] = "ok"
    return entry


def worker_tensorrt(spec: dict[str, Any], out_path: Path) -> None:
    from loda.export.onnx import ExportWrapper
    from loda.export.trt import import_tensorrt
    from loda.preprocess import PreprocessConfig

    trt = import_tensorrt("tensorrt")
    result: dict[str, Any] = {"status": "running", "tensorrt": trt.__version__, "engines": {}}
    write_json(out_path, result)
    torch, device, crops = _setup(spec)
    work = Path(tempfile.mkdtemp(prefix="loda_trt_", dir=spec["work"]))
    model, graphs = _graphs(torch, spec, work, result)
    write_json(out_path, result)

    # The torch reference on the GPU: the exported wrapper, strict fp32.
    wrapper = ExportWrapper(model, PreprocessConfig()).to(device).eval()
    crops_gpu = torch.from_numpy(crops).to(device)
    with torch.inference_mode(), backend_flags(torch, tf32=False, cudnn_benchmark=False):
        ref = torch.cat([wrapper(crops_gpu[s : s + 60]).float() for s in range(0, len(crops), 60)])
    ref = ref.double().cpu().numpy()
    del wrapper, crops_gpu
    torch.cuda.empty_cache()

    for prec, path in graphs.items():
        result["engines"][prec] = {"status": "running"}
        try:
            result["engines"][prec] = _engine(torch, spec, path, crops, ref)
        except Exception as exc:
            result["engines"][prec].update(
                status="error", error=first_line(exc), traceback=traceback.format_exc()[-1500:]
            )
        write_json(out_path, result)
    ok = all(
        e.get("status") == "ok" or str(e.get("status")).startswith("skipped")
        for e in result["engines"].values()
    )
    result["status"] = "ok" if ok else "partial"
    write_json(out_path, result)
