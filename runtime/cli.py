"""``loda-score``: score image files, directories and archives with a LoDa artifact.

Exit codes: 0 every input scored; 1 some inputs failed (they have error rows, written by this
run or, with --resume, by an earlier one) or the run failed (a one-line error); 2 usage error
(bad option, missing INPUT, bad --shard); 130 interrupted by Ctrl-C, 143 by SIGTERM (the output
is flushed and consistent: rerun with --resume to finish); 141 stdout closed by its reader (a
broken pipe, e.g. ``| head``: one line on stderr, the rest of the run is dropped).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from loda.clitools import configure_logging
from loda.errors import LodaError, first_line

from .options import (
    batch_size_option,
    command,
    crops_option,
    device_option,
    inputs_argument,
    layout_option,
    max_member_bytes_option,
    max_pixels_option,
    model_option,
    seed_option,
    settings_as_usage_errors,
    threads_option,
)

__all__ = ["main", "score_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM = 130, 141, 143  # 128 + the signal number
# A scoring job's outcome (loda.runtime.job.OUTCOMES) -> the exit code.
EXIT_CODES = {
    "ok": EXIT_OK,
    "failed": EXIT_FAILED,
    "interrupted": EXIT_SIGINT,
    "terminated": EXIT_SIGTERM,
    "broken-pipe": EXIT_SIGPIPE,
}


def _shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from .inputs import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(first_line(exc)) from None


@command(
    epilog=(
        "INPUT: image files, directories (recursive, sorted), .tar/.tar.gz/.tgz/.zip archives "
        "(read member by member, never extracted), @list.txt (one path per line) or - (paths "
        "on stdin). Rows: source (archive.tar::member for members), score, spread (std of "
        "the crop scores), mos (when the model carries a calibration), width, height, status "
        "(ok/error), error. Exit: 0 all scored, 1 some failed (now or, with --resume, "
        "before), 2 usage error, 130/143 interrupted (rerun with --resume), 141 stdout closed."
    ),
)
@inputs_argument
@model_option
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    help="Result file (CSV or JSONL); - is stdout.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Output format (default: from the suffix, .jsonl -> jsonl, else csv).",
)
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx", "torch"]),
    default=None,
    help="Default: from the artifact's suffix (an .engine's sidecar names its TensorRT flavor).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="tensorrt-rtx only: folder of the JIT runtime cache (default: beside the engine).",
)
@click.option(
    "--cuda-graph", is_flag=True, help="tensorrt-rtx only: capture CUDA graphs (whole graph)."
)
@device_option
@threads_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    help="torch backend only: fp32 (default) or fp16/bf16 autocast on CUDA. ONNX and engine "
    "files carry their precision in the graph.",
)
@crops_option
@layout_option
@click.option(
    "--decode",
    type=click.Choice(["exact", "fast"]),
    default=None,
    help="exact (the model's preprocessing, default) or fast: JPEGs decoded at a reduced scale "
    "(for camera-size photos; recorded in OUTPUT.json).",
)
@seed_option
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=0),
    default=None,
    help="Decode worker processes (default: all cores; 0: decode in-process).",
)
@batch_size_option
@click.option(
    "--queue",
    "queue_size",
    type=click.IntRange(min=1),
    default=None,
    help="Images in flight (bounds memory; default 2 x jobs + 2 batches).",
)
@click.option("--resume", is_flag=True, help="Skip inputs already in --output; append the rest.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--shard", callback=_shard, default=None, help="I/N: score only shard I of N.")
@max_pixels_option
@max_member_bytes_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def score_command(
    inputs: tuple[str, ...],
    model: str,
    output: str,
    fmt: str | None,
    backend: str | None,
    cache_dir: str | None,
    cuda_graph: bool,
    device: str,
    threads: int | None,
    precision: str | None,
    crops: int | None,
    layout: str | None,
    decode: str | None,
    seed: int,
    jobs: int | None,
    batch_size: int | None,
    queue_size: int | None,
    resume: bool,
    overwrite: bool,
    shard: tuple[int, int] | None,
    max_pixels: int,
    max_member_bytes: int | None,
    no_progress: bool,
) -> int:
    """Score images with a LoDa model; one row per input."""
    from .job import ScoreSettings, run_score_job

    settings = ScoreSettings(
        inputs=inputs,
        model=model,
        output=output,
        fmt=fmt,
        backend=backend,
        device=device,
        threads=threads,
        precision=precision,
        cache_dir=cache_dir,
        cuda_graph=cuda_graph,
        batch_size=batch_size,
        crops=crops,
        layout=layout,
        decode=decode,
        seed=seed,
        jobs=jobs,
        queue=queue_size,
        resume=resume,
        overwrite=overwrite,
        shard=shard,
        max_pixels=max_pixels,
        max_member_bytes=max_member_bytes,
        progress=not no_progress,
    )
    with settings_as_usage_errors():
        result = run_score_job(settings)
    for line in result.report():
        _stderr(line)
    return EXIT_CODES[result.outcome]


def _stderr(message: str) -> None:
    click.echo(f"loda-score: {message}", err=True)


def run_score_command(command: click.Command, prog: str, argv: list[str] | None) -> None:
    """Run a scoring command (loda-score, loda-score-ray): usage errors exit 2, user errors 1
    (one line), interrupts 130 (a command that handles Ctrl-C itself returns its own code)."""
    from .inputs import InputError

    configure_logging()  # library records (warnings): plain lines on stderr
    configure_logging(name="loda.runtime.job", prefix=f"{prog}: ")  # the job's progress lines
    try:
        code = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_SIGINT)
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted; rerun with --resume to finish", err=True)
        sys.exit(EXIT_SIGINT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InputError as exc:
        click.echo(f"{prog}: error: {first_line(exc)}", err=True)
        sys.exit(EXIT_USAGE)
    except (LodaError, OSError, ValueError) as exc:
        click.echo(f"{prog}: error: {first_line(exc)}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 2, user errors 1 (one line), interrupts 130 / 143."""
    run_score_command(score_command, "loda-score", argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
