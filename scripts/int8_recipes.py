"""Compare INT8 recipes on ONE FP32 LoDa graph, side by side (docs/experiments.md).

    .venv/bin/python scripts/int8_recipes.py DEMO_DIR [--recipes NAME ...] [--json OUT]

DEMO_DIR is what ``scripts/demo.sh`` made: ``models/model.onnx``, ``train.tar`` (calibration
images) and ``heldout.tar`` (+ its MOS manifest). Every recipe quantizes the same graph with
calibration images picked from ``train.tar`` exactly as ``loda-calib int8`` picks them, and is
scored on ALL held-out images (15 crops each) with ONNX Runtime (CPU), as the demo's parity
step scores them: image score = mean of its crops; dSRCC = SRCC(INT8 vs MOS) - SRCC(FP32 vs MOS)
(the FP32 ONNX graph stands for PyTorch: their SRCC agree to 4 decimals in the demo's table).
Calibration ranges are cached per (target, method, images) under --work (default
out/int8_recipes/<DEMO_DIR name>), so recipes that differ only in what stays float calibrate once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loda.calib.int8 import STEM_MODULE_PATTERN


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str = "tensorrt"
    method: str = "entropy"
    n_calib: int = 64
    float_modules: tuple[str, ...] = ()  # extra module-path regexes kept float
    float_act_act: bool = False  # MatMuls of two activations (attention scores Q @ K^T) float
    reduce_range: bool | None = None  # None: the target's own
    percentile: float | None = None
    extra: dict = field(default_factory=dict)


HEAD = r"loda\.model\.NormedLinear"  # the cosine head: one GEMM that makes the score
# the first layers that see the image: the ViT's patch embedding and the ResNet's stem convs
STEM = STEM_MODULE_PATTERN.pattern
RECIPES = {
    r.name: r
    for r in [
        Recipe("minmax-64", method="minmax"),
        Recipe("entropy-64"),
        Recipe("percentile-64", method="percentile"),
        Recipe("percentile9999-64", method="percentile", percentile=99.99),
        Recipe("entropy-128", n_calib=128),
        Recipe("entropy-256", n_calib=256),
        Recipe("minmax-256", method="minmax", n_calib=256),
        Recipe("entropy-64-head", float_modules=(HEAD,)),
        Recipe("entropy-64-qk", float_act_act=True),
        Recipe("entropy-64-head-qk", float_modules=(HEAD,), float_act_act=True),
        Recipe("minmax-64-head-qk", method="minmax", float_modules=(HEAD,), float_act_act=True),
        Recipe(
            "percentile-64-head-qk", method="percentile", float_modules=(HEAD,), float_act_act=True
        ),
        Recipe("entropy-64-stem", float_modules=(STEM,)),
        Recipe("entropy-64-stem-head", float_modules=(STEM, HEAD)),
        Recipe("minmax-64-stem-head", method="minmax", float_modules=(STEM, HEAD)),
        Recipe("cpu-entropy-64", target="cpu"),
        Recipe("cpu-entropy-64-rr", target="cpu", reduce_range=True),
    ]
}


def held_out(demo: Path, cfg):
    from loda.calib.int8 import _image_candidates, _load_crops

    source, images = _image_candidates(demo / "heldout.tar", 10**6)
    return _load_crops(images, cfg, source), [i.mos for i in images]


def scores(session, crops) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: c})[0] for c in crops])


def session(model_bytes_or_path):
    import onnxruntime as ort

    from loda.cpu_isa import int8_session_config

    options = ort.SessionOptions()
    options.log_severity_level = 3
    int8_session_config(options)
    src = (
        model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    )
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def _weight_fed(model) -> set[str]:
    """Tensors computed from initializers only (weights, possibly transposed/reshaped)."""
    const = {t.name for t in model.graph.initializer}
    for n in model.graph.node:  # topological order
        if n.op_type == "Constant" or (n.input and all(i in const for i in n.input if i)):
            const.update(n.output)
    return const


def quantize(recipe: Recipe, demo: Path, model, cfg, cache_dir: Path):
    """The library's steps (calib/int8.py) with the recipe's knobs; (graph bytes, info)."""
    from dataclasses import replace

    from loda.calib import int8

    spec = int8.TARGETS[recipe.target]
    if recipe.reduce_range is not None:
        spec = replace(spec, reduce_range=recipe.reduce_range)
    _, calib, _, _ = int8.select_images(demo / "train.tar", n_calib=recipe.n_calib, verify=False)
    graph = int8._prepare_graph(model, spec)
    weights = _weight_fed(graph.model)
    extra_float = [
        n.name
        for n in graph.model.graph.node
        if n.op_type in int8.QUANTIZED_OP_TYPES
        and (
            any(re.search(p, int8._namespace(n)) for p in recipe.float_modules)
            or (recipe.float_act_act and not any(i in weights for i in n.input[:2]))
        )
    ]
    if extra_float:
        graph.kept_float["recipe"] = extra_float
    extra = {**spec.extra_options, "CalibStridedMinMax": 1, **recipe.extra}
    pct = recipe.percentile or (99.999 if recipe.method == "percentile" else None)
    if pct:
        extra["CalibPercentile"] = pct
    cache = cache_dir / f"{recipe.target}-{recipe.method}-{pct}-{recipe.n_calib}.json"
    reader = int8.CropReader(calib, cfg)
    t0 = time.perf_counter()
    quantized = int8._quantize(graph, reader, spec, recipe.method, extra, cache)
    seconds = time.perf_counter() - t0
    share, _ = int8.int8_gemm_share(quantized, graph.flops)
    info = {"calib_images": len(calib), "int8_share": share, "extra_float": len(extra_float)}
    return quantized.SerializeToString(), info | {"quantize_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    import onnx

    from loda.compare import compare_scores
    from loda.cpu_isa import current_isa
    from loda.metadata import CheckpointMeta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="calibration cache folder")
    args = parser.parse_args(argv)
    demo = args.demo_dir
    fp32_path = demo / "models" / "model.onnx"
    model = onnx.load(str(fp32_path))
    meta = {p.key: p.value for p in model.metadata_props}
    cfg = CheckpointMeta.from_json(meta["loda"]).preprocess
    images, mos = held_out(demo, cfg)
    ref = scores(session(fp32_path), images.crops)
    cache_dir = args.work or Path("out/int8_recipes") / demo.resolve().parent.name
    cache_dir.mkdir(parents=True, exist_ok=True)
    isa = current_isa()
    print(f"# {fp32_path}; {len(images.names)} held-out images; CPU {isa.model} ({isa.int8_class})")
    cols = "recipe | calib | int8 GEMM % | Spearman vs FP32 | mean |d| | max |d| | SRCC | dSRCC"
    print(cols)
    rows = []
    for name in args.recipes:
        graph, info = quantize(RECIPES[name], demo, model, cfg, cache_dir)
        got = scores(session(graph), images.crops)
        st = compare_scores(
            got, ref, crops_per_image=[len(c) for c in images.crops], names=images.names, mos=mos
        )
        row = {
            "recipe": name,
            **info,
            "spearman_vs_fp32": st.spearman_images,
            "mean_abs_image": st.mean_abs_image,
            "max_abs_image": st.max_abs_image,
            "srcc_int8": st.srcc,
            "srcc_fp32": st.srcc_reference,
            "dsrcc": st.srcc - st.srcc_reference,
        }
        rows.append(row)
        print(
            f"{name} | {info['calib_images']} | {100 * info['int8_share']:.1f} | "
            f"{st.spearman_images:.4f} | {st.mean_abs_image:.4f} | {st.max_abs_image:.4f} | "
            f"{st.srcc:.4f} | {row['dsrcc']:+.4f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": isa.to_dict(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
