"""``loda-trt``: LoDa ONNX -> strongly typed TensorRT engine (TensorRT >= 10.12 and 11.x).

::

    loda-trt build model.onnx [-o model.engine] [--batch 15:60:240] [--workspace GB]
                   [--timing-cache PATH] [--opt-level 0-5]
    loda-trt inspect model.engine

``build`` writes the plan bytes untouched to ``model.engine`` (``trtexec --loadEngine`` reads
it) and the sidecar ``model.engine.json`` (TensorRT version, GPU, precision, profile, hashes,
the ONNX's LoDa record). Precision comes from the ONNX graph (FP32 export, ``loda-export
--precision fp16``, ``loda-calib int8``); there are no precision flags. ``inspect`` prints JSON
to stdout: the sidecar and, where TensorRT and a GPU exist, the engine's I/O tensors.

Exit codes: 0 ok, 1 failure (no TensorRT / cuda-python / GPU: one line saying what to install,
after ``inspect`` has printed what it could without them;
ONNX parser errors: one line per failing node, then the error), 2 usage error (e.g. a malformed
``--batch``). tensorrt and cuda-python are imported only when a command needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from loda.clitools import run
from loda.export.trt import DEFAULT_OPT_LEVEL, DEFAULT_PROFILE, BatchProfile, parse_batch_profile

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
    help="Timing cache file: read if it exists (must match GPU and TensorRT), written after "
    "the build. Speeds up rebuilds.",
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
    profile: BatchProfile,
    workspace_gb: float | None,
    timing_cache: Path | None,
    opt_level: int,
) -> None:
    """Build a TensorRT engine from MODEL.onnx (precision as in the graph)."""
    from loda.export.trt import build_engine

    if output is None:
        output = Path(_stem(onnx_file) + ".engine")
    report = build_engine(
        onnx_file,
        output,
        profile=profile,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        opt_level=opt_level,
        log=_echo,
    )
    side = report.sidecar
    _echo(
        f"loda-trt: TensorRT {side['tensorrt_version']} {side['precision']} engine "
        f"(batch {profile}, {side['gpu']['name']}) written to {report.engine_path} "
        f"({report.size_mb:.1f} MB, {report.total_seconds:.1f} s; sidecar {report.sidecar_path})"
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

    result = inspect_engine(engine_file, log=_echo)
    click.echo(json.dumps(result, indent=2, sort_keys=True))
    if result["note"]:
        raise TrtUnavailable(result["note"])


def main() -> None:
    run(cli, prog_name="loda-trt")


if __name__ == "__main__":
    main()
