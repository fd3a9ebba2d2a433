"""``loda-trt``: LoDa ONNX -> strongly typed engine (TensorRT for RTX, or TensorRT >= 10.12).

::

    loda-trt build model.onnx [-o model.engine] [--flavor rtx|tensorrt]
                   [--compute-capability 8.6,8.9,12.0] [--batch 15:60:240] [--workspace GB]
                   [--timing-cache PATH] [--opt-level 0-5]
    loda-trt inspect model.engine

``build`` (default ``--flavor rtx``: TensorRT for RTX, no GPU needed, a portable engine for
the RTX compute capabilities; ``tensorrt``: built on this machine's GPU, for it) prints the
parsed network's layers, its GEMM FLOPs by the data type TensorRT computes them in, the build
time and the plan size; it writes the plan bytes untouched to ``model.engine`` (``trtexec
--loadEngine`` reads a TensorRT one) and the sidecar ``model.engine.json`` (flavor and version,
targets or GPU, precision, profile, hashes, the network summary, the ONNX's LoDa record).
Precision comes from the ONNX graph (FP32 export, ``loda-export --precision fp16``,
``loda-calib int8``); there are no precision flags. ``inspect`` prints JSON to stdout: the
sidecar and, where the flavor's runtime and a GPU can load the plan, its I/O tensors and layers.

Exit codes: 0 ok, 1 failure (flavor / cuda-python / GPU missing: one line saying what to
install, after ``inspect`` has printed what it could without them; ONNX parser errors: one line
per failing node, then the error, nothing written), 2 usage error (e.g. a malformed
``--batch``). tensorrt, tensorrt_rtx and cuda-python are imported only when a command needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from loda.clitools import run
from loda.export.trt import (
    DEFAULT_FLAVOR,
    DEFAULT_OPT_LEVEL,
    DEFAULT_PROFILE,
    FLAVORS,
    BatchProfile,
    parse_batch_profile,
    parse_compute_capabilities,
)

__all__ = ["BatchProfileParam", "cli", "main"]


class BatchProfileParam(click.ParamType):
    """``MIN:OPT:MAX`` batch sizes (ints >= 1, MIN <= OPT <= MAX)."""

    name = "MIN:OPT:MAX"

    def convert(self, value, param, ctx) -> BatchProfile:
        if isinstance(value, BatchProfile):
            return value
        try:
            return parse_batch_profile(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ComputeCapabilitiesParam(click.ParamType):
    """A comma-separated list of compute capabilities, e.g. ``8.6,8.9,12.0``."""

    name = "CC[,CC...]"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_compute_capabilities(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _stem(path: Path) -> str:
    text = str(path)
    return text[: -len(".onnx")] if text.endswith(".onnx") else text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build and inspect TensorRT engines of LoDa ONNX graphs."""


@cli.command("build")
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Engine file. Default: next to MODEL, .onnx replaced by .engine.",
)
@click.option(
    "--flavor",
    type=click.Choice(list(FLAVORS)),
    default=DEFAULT_FLAVOR,
    show_default=True,
    help="rtx: TensorRT for RTX, built without a GPU, specialised on the user's RTX GPU at "
    "load time. tensorrt: TensorRT 10/11, built on (and for) this machine's GPU.",
)
@click.option(
    "--compute-capability",
    "compute_capabilities",
    type=ComputeCapabilitiesParam(),
    default=None,
    help="rtx only: target GPUs, e.g. 8.6,8.9,12.0 (7.5 must be named). Default: "
    "TensorRT-RTX's own set.",
)
@click.option(
    "--batch",
    "profile",
    type=BatchProfileParam(),
    default=str(DEFAULT_PROFILE),
    show_default=True,
    help="Optimisation profile on the crop batch: MIN:OPT:MAX (15 crops per image).",
)
@click.option(
    "--workspace",
    "workspace_gb",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Workspace memory pool limit in GiB. Default: TensorRT's (the GPU's memory).",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="tensorrt only: timing cache file, read if it exists (must match GPU and TensorRT), "
    "written after the build. Speeds up rebuilds.",
)
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=DEFAULT_OPT_LEVEL,
    show_default=True,
    help="Builder optimisation level (0 fastest build; 5 slowest build, fastest engine).",
)
def build_command(
    onnx_file: Path,
    output: Path | None,
    flavor: str,
    compute_capabilities: tuple[str, ...] | None,
    profile: BatchProfile,
    workspace_gb: float | None,
    timing_cache: Path | None,
    opt_level: int,
) -> None:
    """Build an engine from MODEL.onnx (precision as in the graph)."""
    from loda.onnx_files import check_onnx_file

    check_onnx_file(onnx_file)  # damaged, or external data outside its folder: one line
    from loda.export.trt import build_engine

    if output is None:
        output = Path(_stem(onnx_file) + ".engine")
    report = build_engine(
        onnx_file,
        output,
        flavor=flavor,
        compute_capabilities=compute_capabilities,
        profile=profile,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        opt_level=opt_level,
    )
    side = report.sidecar
    where = (
        side["gpu"]["name"]
        if side.get("gpu")
        else f"compute capabilities {_targets(side.get('compute_capabilities'))}"
    )
    _echo(
        f"loda-trt: {side['flavor_label']} {side['tensorrt_version']} {side['precision']} engine "
        f"(batch {profile}, {where}; {report.network.layers} layers, "
        f"{report.network.share('HALF'):.1%} of GEMM FLOPs in HALF, "
        f"{report.network.share('INT8'):.1%} in INT8) written to {report.engine_path} "
        f"({report.size_mb:.1f} MB; build {report.build_seconds:.1f} s, total "
        f"{report.total_seconds:.1f} s; sidecar {report.sidecar_path})"
    )
    _echo(f"next: loda-trt inspect {report.engine_path}")


@cli.command("inspect")
@click.argument("engine_file", metavar="MODEL.engine", type=click.Path(path_type=Path))
def inspect_command(engine_file: Path) -> None:
    """Print the engine's sidecar and its I/O tensors as JSON (stdout).

    Without TensorRT or a GPU the JSON still holds the sidecar, then one line says what is
    missing for the I/O listing and the exit status is 1.
    """
    from loda.export.trt import TrtUnavailable, inspect_engine

    result = inspect_engine(engine_file)
    click.echo(json.dumps(result, indent=2, sort_keys=True))
    side = result["sidecar"] or {}
    if side:
        batch = (side.get("profile") or {}).get("batch") or {}
        _echo(
            f"{engine_file}: {side.get('flavor_label', 'TensorRT')} "
            f"{side.get('tensorrt_version')} {side.get('precision')} engine; targets "
            f"{_targets(side.get('compute_capabilities'), side.get('gpu'))}; batch "
            f"{batch.get('min')}:{batch.get('opt')}:{batch.get('max')}; ONNX sha256 "
            f"{(side.get('onnx') or {}).get('sha256', '?')[:12]}; plan sha256 "
            f"{str(side.get('plan_sha256'))[:12]}"
        )
    if result["note"]:
        raise TrtUnavailable(result["note"])


def _targets(ccs, gpu=None) -> str:
    if isinstance(ccs, list):
        return ",".join(ccs)
    if gpu:
        return f"{gpu.get('name')} (sm {gpu.get('compute_capability')})"
    return "TensorRT-RTX default" if ccs == "default" else str(ccs)


def main() -> None:
    run(cli, prog_name="loda-trt")


if __name__ == "__main__":
    main()
