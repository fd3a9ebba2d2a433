"""The recommendation: the fastest settings whose parity is acceptable on every model."""

from __future__ import annotations

from typing import Any

from .check import Check
from .common import Skip, r
from .variants import RUNTIME_VARIANTS, VARIANTS


def _gain(check: Check, kind: str, variant: str, batch: int, eager: float) -> float | None:
    rows = [
        e
        for e in check.extra_entries
        if e["kind"] == kind and e["variant"] == variant and e["batch"] == batch
        and e.get("items_per_s")
    ]  # fmt: skip
    return r(max(e["items_per_s"] for e in rows) / eager, 3) if rows and eager else None


def _fp32(check: Check, batch: int) -> float | None:
    return check.throughput.get("fp32", {}).get(batch, {}).get("items_per_s")


def _per_batch(check: Check, entries: list[dict[str, Any]], b: int) -> dict[str, Any] | None:
    ok = [
        e
        for e in entries
        if e["batch"] == b
        and e.get("items_per_s")
        and not VARIANTS[e["variant"]].end_to_end
        and check.acceptable.get(VARIANTS[e["variant"]].precision_key, False)
    ]
    if not ok:
        return None
    best = max(ok, key=lambda e: e["items_per_s"])
    eager = [e for e in ok if e["kind"] == "eager"]
    best_eager = max(eager, key=lambda e: e["items_per_s"], default=None)
    base = _fp32(check, b)
    return {
        "fastest": f"{best['variant']} ({best['kind']})",
        "crops_per_s": best["items_per_s"],
        "speedup_vs_fp32": r(best["items_per_s"] / base, 3) if base else None,
        "fastest_eager": best_eager and best_eager["variant"],
        "fastest_eager_crops_per_s": best_eager and best_eager["items_per_s"],
    }


def _defaults(check: Check, pick: dict[str, Any] | None, big: int) -> dict[str, Any]:
    """The torch backend's defaults, from the fastest acceptable eager variant at ``big``."""
    if not (pick and pick["fastest_eager"]):
        return {"justified": False}
    v = VARIANTS[pick["fastest_eager"]]
    eager_best = pick["fastest_eager_crops_per_s"]
    graph_gain = _gain(check, "cuda_graph", v.name, big, eager_best)
    compile_gain = _gain(check, "torch_compile", v.name, big, eager_best)
    base = _fp32(check, big)
    gain = r(eager_best / base, 3) if base else 0.0
    return {
        "variant": v.name,
        "precision": v.dtype,
        "mode": v.mode,
        "tf32": v.tf32,
        "channels_last": v.channels_last,
        "cudnn_benchmark": v.cudnn_benchmark,
        "cuda_graphs": bool(graph_gain and graph_gain >= 1.1),
        "cuda_graphs_gain": graph_gain,
        "torch_compile": bool(compile_gain and compile_gain >= 1.1),
        "torch_compile_gain": compile_gain,
        "speedup_vs_fp32": gain,
        "speedup_vs_fp32_with_graphs_or_compile": pick["speedup_vs_fp32"],
        "justified": gain >= 1.2,
    }


def recommendation(check: Check) -> dict[str, Any]:
    if not check.throughput:
        raise Skip("no throughput measurements")
    args = check.args
    entries = [
        {"kind": "eager", "variant": name, "batch": b, **row}
        for name, rows in check.throughput.items()
        for b, row in rows.items()
    ]
    entries += check.extra_entries
    per_batch = {str(b): _per_batch(check, entries, b) for b in args.batches}
    big = max(args.batches)
    rule = (
        "among precision variants whose parity is acceptable on every model (no inf/NaN, "
        f"Spearman vs fp32 >= {args.min_spearman}, |dSRCC| <= {args.max_dsrcc} where "
        "MOS exist), the highest crops/s at each batch; the torch backend defaults follow "
        f"batch {big}; CUDA graphs / torch.compile count only when >= 10% faster than eager"
    )
    # What loda.runtime's torch backend offers today: fp32 or fp16/bf16 autocast.
    supported = {}
    for b in args.batches:
        rows = [
            (row["items_per_s"], name)
            for name in RUNTIME_VARIANTS
            if check.acceptable.get(name, False)
            and (row := check.throughput.get(name, {}).get(b))
            and row.get("items_per_s")
        ]
        if rows:
            ips, name = max(rows)
            base = _fp32(check, b)
            supported[str(b)] = {
                "variant": name,
                "crops_per_s": ips,
                "speedup_vs_fp32": r(ips / base, 3) if base else None,
            }
    return {
        "rule": rule,
        "per_batch": per_batch,
        "torch_backend_defaults": _defaults(check, per_batch.get(str(big)), big),
        "best_runtime_supported_now": supported,
        "acceptable_precisions": check.acceptable,
    }
