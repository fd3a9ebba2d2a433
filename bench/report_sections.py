"""The sections of docs/benchmarks.md, one renderer per benchmark (see report.py).

A renderer takes ``[(file name, record), ...]`` and returns Markdown lines. It formats the
figures the records hold and computes none, so a transcribed record reads as it was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Records = list[tuple[str, dict[str, Any]]]
PATHS = ("before", "exact", "fast")  # bench_preprocess.py's decode paths


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def machine(record: dict[str, Any]) -> str:
    """``CPU, N usable cores (ISA flags)``."""
    m = record.get("machine") or {}
    cpu = m.get("cpu_model") or m.get("cpu") or "unknown CPU"
    cores = m.get("usable_cpus") or m.get("cpus")
    isa = m.get("isa")
    text = cpu + (f", {cores} usable cores" if cores else "")
    return text + (f" ({', '.join(isa)})" if isa else "")


def date(record: dict[str, Any]) -> str:
    m = record.get("machine") or {}
    return str(m.get("date") or "undated")[:10]


def load(record: dict[str, Any]) -> str | None:
    """The load average as the record holds it (1-minute figures), or None."""
    la = record.get("load_average") or {}
    if "stated" in la:
        return la["stated"]
    m = record.get("machine") or {}
    before = la.get("before") or record.get("load_average_at_start") or m.get("load_average_start")
    after = (
        la.get("after")
        or record.get("load_average_at_end")
        or record.get("load_average_after")
        or m.get("load_average_end")
    )
    if before is None and after is None:
        return None
    first = [x[0] if isinstance(x, list) else x for x in (before, after)]
    if first[0] is None:
        return f"{first[1]:g} at the end"
    return f"{first[0]:g}" + ("" if first[1] is None else f" -> {first[1]:g}")


def run_line(record: dict[str, Any]) -> str:
    """Machine, date and load of a run, as one sentence."""
    when = date(record)
    text = f"On {machine(record)}; " + (
        "date not recorded" if when == "undated" else f"run of {when}"
    )
    la = load(record)
    return text + (f"; load average {la}" if la else "") + "."


def source(name: str, record: dict[str, Any]) -> str:
    if record.get("source"):
        origin = record["source"]
    else:
        commit = (record.get("machine") or {}).get("git_commit")
        origin = "the JSON the benchmark wrote" + (f", at commit {commit[:7]}" if commit else "")
    note = f"; {record['note']}" if record.get("note") else ""
    return f"Source: `bench/results/{name}`: {origin}{note}."


def goals(records: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for g in records:
        status = "n/a" if g.get("passed") is None else ("PASS" if g["passed"] else "MISS")
        lines.append(f"- **{status}** {g['goal']}: {g['measured']}")
    return lines


def notes(record: dict[str, Any]) -> list[str]:
    out = []
    for paragraph in record.get("notes", []):
        out += [paragraph, ""]
    return out


def _num(value: Any, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


# --------------------------------------------------------------------------------------------
# Transcribed tables and the test suite
# --------------------------------------------------------------------------------------------


def tables(records: Records) -> list[str]:
    lines: list[str] = []
    for name, r in records:
        lines += [f"## {r['title']}", "", f"Machine: {r['machine_stated']}. {r['intro']}", ""]
        lines += [*md_table(r["columns"], r["rows"]), ""]
        lines += [*notes(r), source(name, r), ""]
    return lines


def test_suite(records: Records) -> list[str]:
    lines = ["## Test suite run time", ""]
    for name, r in records:
        e = r.get("earlier")
        lines += [
            "`make test` runs ruff (lint and format check, Markdown code blocks included) and "
            "the whole suite, import-linter's layer contracts included. On a fresh clone at "
            f"commit {r['commit']} ({date(r)}; {machine(r)}, no GPU; {r['install']}) "
            f"`bash .ci/run` took {r['wall']}: {r['passed']} tests passed and {r['skipped']} "
            f"skipped with the reason ({r['skipped_why']}), {r['tests_time']} of tests."
            + (
                f" Earlier: {e['passed']} passed, {e['skipped']} skipped, {e['tests_time']} of "
                f"tests ({e['date']}, {e['cpu_model']})."
                if e
                else ""
            ),
            "",
            source(name, r),
            "",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# bench_export.py
# --------------------------------------------------------------------------------------------


def _export_intro(r: dict[str, Any]) -> str:
    s, f, sg = r["settings"], r["flops"], r["sgemm"]
    v = (r.get("machine") or {}).get("versions", {})
    nominal = f.get("nominal_gflop_per_crop")
    return (
        f"`{r['config']}` ({r['checkpoint']['source']}). {run_line(r)} {s['threads']} threads "
        f"for every variant, torch {v.get('torch', '?')}, onnxruntime "
        f"{v.get('onnxruntime', '?')}; {s['crops']} real crops in batches of {s['batch']}, "
        f"{s['warmup']} warm-up batch(es), median of {s['repeats']} interleaved rounds. FLOPs "
        f"per crop: {f['graph_gemm_gflop_per_crop']:.2f} GFLOP counted in the ONNX graph, "
        f"{f['torch_counter_gflop_per_crop']:.2f} by torch's FlopCounterMode"
        + (f" ({nominal} nominal)" if nominal else "")
        + f". Measured sgemm peak: {sg['peak_gflops']:.1f} GFLOP/s ({sg['peak_from']}), so the "
        f"sgemm-bound limit is {r['sgemm_bound_limit_crops_per_s']:.2f} crops/s."
    )


def _export_row(row: dict[str, Any]) -> list[str]:
    p = row.get("parity") or {}
    pct = f"{row['pct_of_sgemm_peak']:.1f}%"
    if row.get("precision") == "int8":
        pct += " (int8 math)"
    return [
        row["label"],
        f"{row['crops_per_s']:.2f}",
        f"{row['x_eager']:.2f}",
        f"{row['gflops']:.1f}",
        pct,
        f"{row['size_mb']:.1f}",
        _num(p.get("max_abs"), ".1e"),
        _num(p.get("spearman_crops"), ".4f"),
    ]


def bench_export(records: Records) -> list[str]:
    lines = [
        "## Export and precision benchmark (`bench/bench_export.py`)",
        "",
        "Run it with `make bench` (both CPU benchmarks, about 25 minutes on `loda_b16`) or "
        "`python bench/bench_export.py --config loda_b16 --out out/bench/export`; "
        "`bench/README.md` explains every column.",
        "",
    ]
    columns = [
        "variant", "crops/s", "x eager", "GFLOP/s", "% of sgemm peak", "size MB",
        "max \\|dscore\\| vs eager (crops)", "Spearman (crops)",
    ]  # fmt: skip
    for name, r in records:
        lines += [_export_intro(r), ""]
        lines += [*md_table(columns, [_export_row(row) for row in r["variants"]]), ""]
        lines += ["Goals:", "", *goals(r["goals"]), ""]
        lines += [*notes(r), source(name, r), ""]
    return lines


# --------------------------------------------------------------------------------------------
# bench_score.py
# --------------------------------------------------------------------------------------------

_WAYS = {
    "inference": "ORT inference alone, on pre-made crops",
    "pipeline": "pipeline in-process (`score_items`: decode workers + packing + inference)",
    "loda-score": "`loda-score` end to end, start-up excluded",
    "loda-score-total": "`loda-score` end to end, start to exit",
    "torch-loop": "PyTorch loop in the authors' style (per-image decode, 15 crops, eager fp32)",
}


def _score_label(r: dict[str, Any]) -> str:
    if r.get("label"):
        return r["label"]
    return f"{r['model']['onnx_precision'].upper()}, {r['throughput']['images']} images"


def _score_run(r: dict[str, Any]) -> str:
    t, s = r["throughput"], r["settings"]
    minutes = f", {r['seconds'] / 60:.0f} minutes in all" if r.get("seconds") else ""
    return (
        f"- {_score_label(r)}: {run_line(r)[:-1]}{minutes}. `{r['config']}` "
        f"({r['model']['source']}), {r['model']['onnx_precision'].upper()} graph"
        + (f" ({r['model']['note']})" if r["model"].get("note") else "")
        + f"; ONNX Runtime's CPU provider with {s['threads']} threads; {t['format']} in a tar, "
        f"{t['crops_per_image']} crops each, batches of {t['batch_crops']} crops, "
        f"{t['score_jobs']} decode workers; median of {s['repeats']} interleaved rounds."
    )


def _throughput(runs: Sequence[dict[str, Any]]) -> list[str]:
    columns = ["way"]
    for r in runs:
        columns += [f"{_score_label(r)}: images/s", "overhead"]
    rows = []
    for way, label in _WAYS.items():
        if way == "loda-score":
            startup = " / ".join(
                f"{r['throughput']['startup']['median_seconds']:.2f}" for r in runs
            )
            label += f" ({startup} s)"
        row = [label]
        for r in runs:
            w = next(x for x in r["throughput"]["ways"] if x["name"] == way)
            shown = way not in ("inference", "torch-loop")
            row += [f"{w['images_per_s']:.3f}",
                    f"{100 * w['overhead_vs_inference']:.1f}%" if shown else ""]  # fmt: skip
        rows.append(row)
    x_row = ["`loda-score` (start-up excluded) vs the PyTorch loop"]
    for r in runs:
        w = next(x for x in r["throughput"]["ways"] if x["name"] == "loda-score")
        x_row += [f"{w['x_torch_loop']:.2f}x", ""]
    return md_table(columns, [*rows, x_row])


def _decode(name: str, r: dict[str, Any]) -> list[str]:
    formats = r["decode"]["formats"]
    jobs = [s["jobs"] for s in formats[0]["scaling"]]
    columns = ["format", "KB per file", "in-process, one core", *(f"`-j {j}`" for j in jobs)]
    rows = []
    for f in formats:
        cells = [
            f"{s['images_per_s']:.1f}"
            + ("" if s.get("x_one_worker") is None or s["jobs"] == 1 else f" ({s['x_one_worker']:.2f}x)")
            for s in f["scaling"]
        ]  # fmt: skip
        rows.append(
            [f["label"], f"{f['mean_file_kb']:.0f}", f"{f['per_worker_images_per_s']:.1f}", *cells]
        )
    return [
        "Decode + resize + 15 crops (`prepare_image`), images/s, in-process and through "
        f"`loda-score`'s decode workers ((x): over `-j 1`). {run_line(r)}",
        "",
        *md_table(columns, rows),
        "",
        *notes(r),
        source(name, r),
        "",
    ]


def _memory(name: str, r: dict[str, Any]) -> list[str]:
    m = r["memory"]
    rows = [
        [
            run["images"],
            _num(run.get("archive_mb"), ".1f", "-"),
            f"{run['peak_rss_sum_mb']:.0f}",
            _num(run.get("peak_pss_sum_mb"), ".0f", "-"),
        ]
        for run in m["runs"]
    ]
    return [
        f"Peak memory of `loda-score` and its workers (summed over the processes, `/proc` polled "
        f"every {m['poll_seconds'] * 1000:.0f} ms; `{m['config']}` so the run is quick; "
        f"`-j {m['jobs']}`, queue {m['queue_images']} images, at most "
        f"{m['in_flight_crops_mb']:.0f} MB of crops in flight). {run_line(r)}",
        "",
        *md_table(["images", "tar MB", "peak RSS MB", "peak PSS MB"], rows),
        "",
        *goals(m["goals"]),
        "",
        *notes(r),
        source(name, r),
        "",
    ]


def bench_score(records: Records) -> list[str]:
    lines = ["## Scoring benchmark (`bench/bench_score.py`)", ""]
    runs = [(n, r) for n, r in records if r.get("throughput")]
    if runs:
        lines += [_score_run(r) for _, r in runs] + [""]
        lines += [*_throughput([r for _, r in runs]), ""]
        lines += [
            "Overhead: the time over inference alone on the same crops, as a share of inference "
            "alone's time.",
            "",
        ]
        for _, r in runs:
            lines += notes(r)
        lines += [source(name, r) for name, r in runs] + [""]
    for name, r in records:
        if r.get("decode"):
            lines += _decode(name, r)
    for name, r in records:
        if r.get("memory"):
            lines += _memory(name, r)
    return lines


# --------------------------------------------------------------------------------------------
# bench_build.py, bench_hostile.py
# --------------------------------------------------------------------------------------------


def bench_build(records: Records) -> list[str]:
    lines = ["## TensorRT-RTX engine builds (`bench/bench_build.py`)", ""]
    for name, r in records:
        lines += [
            f"{run_line(r)} No GPU; TensorRT-RTX {r['tensorrt_rtx']}, profile `{r['profile']}`; "
            "random-init weights, INT8 calibrated on 8 demo images. Build time is "
            "`build_serialized_network`; peak RSS is the build's child process (`VmHWM`).",
            "",
        ]
        rows, folds = [], []
        for config, entry in r["configs"].items():
            for precision, b in entry["builds"].items():
                share = ", ".join(f"{k} {v:.1%}" for k, v in b["gemm_flop_share"].items())
                rows.append([config, precision.upper(), f"{b['build_s']:.1f}",
                             f"{b['peak_rss_mb']:,.0f}", f"{b['plan_mb']:.1f}",
                             f"{b['layers']:,}", share])  # fmt: skip
            for precision, f in entry.get("folding", {}).items():
                t, n = f["tensorrt"], f["onnx_nodes"]
                folds.append([f"{config} {precision.upper()}", f"{n['before']:,} -> {n['after']:,}",
                              f"{t['before']['layers']:,} -> {t['after']['layers']:,}",
                              f"{t['before']['int64_layers']:,} -> {t['after']['int64_layers']:,}"])  # fmt: skip
        cols = ["config", "precision", "build s", "peak RSS MB", "plan MB", "TensorRT layers",
                "GEMM FLOPs by TensorRT type"]  # fmt: skip
        lines += [*md_table(cols, rows), ""]
        if folds:
            lines += ["Shape arithmetic folded at export (before -> after):", ""]
            cols = ["graph", "ONNX nodes", "TensorRT layers", "of which INT64 outputs"]
            lines += [*md_table(cols, folds), ""]
        lines += [f"The whole run took {r['seconds']:.0f} s.", "", source(name, r), ""]
    return lines


def bench_hostile(records: Records) -> list[str]:
    lines = ["## Memory on zero bombs (`bench/bench_hostile.py`)", ""]
    for name, r in records:
        s = r["settings"]
        by_bomb: dict[str, dict[int, dict[str, Any]]] = {}
        for run in r["runs"]:
            by_bomb.setdefault(run["bomb"], {})[run["jobs"]] = run
        rows = []
        for bomb, runs in by_bomb.items():
            first = next(iter(runs.values()))
            rows.append(
                [f"`{bomb}` ({first['archive_bytes'] / 1e6:.2f} MB)"]
                + [f"{runs[j]['peak_rss_bytes'] / 1e9:.2f} GB" for j in s["jobs"]]
                + [f"{runs[2]['seconds']:.1f} s" if 2 in runs else "-"]
            )
        lines += [
            f"`loda-score` on archives of zeros (members of {s['member_gb']:g} GB, and three "
            f"members one byte under the member cap), model `{s['model']}`; peak RSS of the "
            f"whole process tree, polled every {s['poll_seconds'] * 1000:.0f} ms. {run_line(r)}",
            "",
            *md_table(
                ["archive (size on disk)", *(f"-j {j}" for j in s["jobs"]), "time at -j 2"], rows
            ),
            "",
            f"`loda-score --help` alone: {r['idle_rss_bytes'] / 1e9:.2f} GB. Goal: peak <= "
            f"{s['goal_bytes'] / 1e9:g} GB at `-j` <= 2: "
            + ("met." if all(x["goal"] == "PASS" for x in r["runs"]) else "**missed**."),
            "",
            source(name, r),
            "",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# bench_preprocess.py, bench_ray.py (their JSON as those scripts write it)
# --------------------------------------------------------------------------------------------


def _section(title: str, records: Records, body) -> list[str]:
    """``title``, then each record through ``body``, or, for a placeholder, the command that
    will replace it."""
    lines = [title, ""]
    for name, r in records:
        if not r.get("placeholder"):
            lines += [*body(r), "", source(name, r), ""]
            continue
        doc = r["earlier_figures"]
        lines += [
            f"Not yet measured into `bench/results/{name}`: `{r['command']}`. Figures of earlier "
            f"runs: [{doc}]({doc.removeprefix('docs/')}).",
            "",
        ]
    return lines


def _preprocess(r: dict[str, Any]) -> list[str]:
    rows = [
        [label, *(_num(row.get(k, {}).get("images_per_s"), ".1f", "-") for k in PATHS),
         _num(row.get("fast_vs_exact"), ".2f", "-") + "x"]
        for label, row in r["speed"].items()
    ]  # fmt: skip
    if rows:
        lines = [f"Images/s per core, one thread. {run_line(r)}", ""]
        lines += [*md_table(["image", *PATHS, "fast vs exact"], rows), ""]
    else:  # a fidelity-only run (--sizes with no size)
        lines = [f"Fidelity only. {run_line(r)}", ""]
    fid = r.get("fidelity") or {}
    for key in [k for k in fid if k == "demo_set" or k.startswith("large_jpeg")]:
        if "abs_dsrcc" in fid[key]:
            f = fid[key]
            ci = f.get("dsrcc_ci95")
            lines.append(
                f"- fidelity, fast vs exact, {key} ({f['n']} images, {fid['model']}): "
                f"|dSRCC| {f['abs_dsrcc']:.5f}"
                + (f" (95% bootstrap CI of dSRCC [{ci[0]:+.4f}, {ci[1]:+.4f}])" if ci else "")
            )
            finer = f.get("finer")
            if finer:
                lines.append(
                    f"- the same set one DCT scale finer: |dSRCC| {finer['abs_dsrcc']:.5f} (95% "
                    f"CI [{finer['dsrcc_ci95'][0]:+.4f}, {finer['dsrcc_ci95'][1]:+.4f}])"
                )
            for null in (f.get("nulls") or {}).values():
                lines.append(
                    f"- null change, {null['what']}: |dSRCC| {null['abs_dsrcc']:.5f} (95% CI "
                    f"[{null['dsrcc_ci95'][0]:+.4f}, {null['dsrcc_ci95'][1]:+.4f}]), mean "
                    f"|dscore| {null['mean_abs_dscore']:.4f} (fast path {f['mean_abs_dscore']:.4f})"
                )
    return lines


def _ray(r: dict[str, Any]) -> list[str]:
    runs = [k for k in ("loda_score", "ray_small", "loda_score_large", "ray_large") if k in r]
    # memory from the untimed pass; records before it kept it in the timed runs
    memory = r.get("memory") or {key: r[key]["memory"] for key in runs}
    rows = [
        [f"`{key}`", r[key]["images"], f"{r[key]['images_per_s']:.2f}",
         f"{r[key]['images_per_s_wall']:.2f}", f"{memory[key]['peak_pss_sum_mb']:.0f}",
         f"{memory[key]['peak_rss_sum_mb']:.0f}"]
        for key in runs
    ]  # fmt: skip
    cols = ["run", "images", "images/s", "images/s with start-up", "peak PSS MB", "peak RSS MB"]
    large = (
        f"; on the 4x archive {100 * r['ray_overhead_large']:.1f}% (with start-up "
        f"{100 * r['ray_overhead_large_wall']:.1f}%)"
        if "ray_overhead_large" in r
        else ""
    )
    return [
        run_line(r),
        "",
        *md_table(cols, rows),
        "",
        f"Ray's overhead {100 * r['ray_overhead']:.1f}% (with start-up "
        f"{100 * r['ray_overhead_wall']:.1f}%){large}; peak PSS of the 4x archive / 1x: "
        f"{r['memory_ratio_large_vs_small_pss']:.2f}.",
        *_ray_costs(r),
    ]


def _ray_costs(r: dict[str, Any]) -> list[str]:
    """The fixed / per-image split of bench_ray.py (records written before it have none)."""
    if "ray_overhead_marginal" not in r:
        return []
    goal = f"{100 * r['overhead_goal']:.0f}%"

    def even(key: str) -> str:
        n = r[key]
        return f"from {n:.0f} images on" if n is not None else "at no archive size"

    bare = r.get("bare_ray_data_first_row_seconds")
    bare_text = (
        f" (of which Ray Data alone, a do-nothing pipeline to its first row: {bare:.1f} s)"
        if bare is not None
        else ""
    )
    return [
        "",
        f"Fitted per command as fixed + per-image cost (own time): fixed {r['ray_fixed_seconds']:.1f} s "
        f"for Ray{bare_text}, {r['loda_score_fixed_seconds']:.1f} s for loda-score; per image "
        f"{r['ray_seconds_per_image']:.3f} s vs {r['loda_score_seconds_per_image']:.3f} s: the "
        f"overhead a long run tends to is {100 * r['ray_overhead_marginal']:.1f}% "
        f"({100 * r['ray_overhead_marginal_wall']:.1f}% with start-up). Overhead <= {goal} "
        f"{even('break_even_images')} ({even('break_even_images_wall')} with start-up).",
    ]


def bench_preprocess(records: Records) -> list[str]:
    return _section("## Preprocessing (`bench/bench_preprocess.py`)", records, _preprocess)


def bench_ray(records: Records) -> list[str]:
    return _section("## Ray (`bench/bench_ray.py`)", records, _ray)
