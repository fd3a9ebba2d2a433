"""``loda-score-ray``: ``loda-score`` on Ray Data (a local Ray, or a cluster with --ray-address).

Exit codes as ``loda-score``: 0 every input scored; 1 some inputs failed (error rows, now or in
an earlier run with --resume) or the run failed (one line; the complete parts stay: --resume);
2 usage error (bad option, missing INPUT); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import os

import click

from loda.errors import first_line

from .cli import EXIT_FAILED, EXIT_OK
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

__all__ = ["main", "score_ray_command"]


@command(
    epilog=(
        "INPUT: as loda-score (image files, directories, .tar/.tar.gz/.zip archives, @list.txt), "
        "local or as URIs of any filesystem pyarrow reads (s3://, gs://, file://, ...); "
        "each archive is read by its own task, so WebDataset-style shards are read in parallel. "
        "OUTPUT is a folder of part files with loda-score's columns and a _SUCCESS marker "
        "written last (docs/ray.md)."
    ),
)
@inputs_argument
@model_option
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output folder (created): a local path, or a URI prefix (s3://bucket/scores/, ...).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv", "jsonl"]),
    default="parquet",
    show_default=True,
    help="Part file format.",
)
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "torch"]), default=None)
@device_option
@threads_option
@crops_option
@layout_option
@seed_option
@batch_size_option
@click.option("--resume", is_flag=True, help="Skip inputs already in OUTPUT; score the rest.")
@click.option("--overwrite", is_flag=True, help="Delete the part files already in OUTPUT.")
@max_pixels_option
@max_member_bytes_option
@click.option(
    "--ray-address",
    default=None,
    help="Join this Ray cluster (e.g. auto, or ray://HEAD:10001); default: RAY_ADDRESS, "
    "else a local Ray.",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs of the local Ray (default: all; ignored with --ray-address).",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    default=None,
    help="Scoring actors (default: one per GPU; CPU-only: one per CPU, at most 8, each with "
    "CPUs / actors ONNX Runtime threads).",
)
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(min=0),
    default=None,
    help="Default: 1 when the cluster has GPUs, else 0 (ONNX Runtime on CPU).",
)
@click.option(
    "--cpus-per-actor",
    type=click.FloatRange(min=0),
    default=None,
    help="Ray CPUs each scoring actor reserves (default: 1 with GPUs; CPU-only: half the "
    "cluster's CPUs shared by the actors, the rest left to the read tasks).",
)
@click.option(
    "--files-per-task",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Loose files per read task (each archive is one task).",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries of a failed read task, restarts of a dead scoring actor.",
)
@click.option("--rows-per-file", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--no-progress", is_flag=True, help="No Ray progress bars.")
def score_ray_command(
    inputs: tuple[str, ...],
    model: str,
    output: str,
    fmt: str,
    backend: str | None,
    device: str,
    threads: int | None,
    crops: int | None,
    layout: str | None,
    seed: int,
    batch_size: int | None,
    resume: bool,
    overwrite: bool,
    max_pixels: int,
    max_member_bytes: int | None,
    ray_address: str | None,
    num_cpus: int | None,
    actors: int | None,
    gpus_per_actor: float | None,
    cpus_per_actor: float | None,
    files_per_task: int,
    max_retries: int,
    rows_per_file: int,
    no_progress: bool,
) -> int:
    """Score images with a LoDa model on Ray Data; one row per input, in a folder of parts."""
    from .inputs import InputError
    from .job import check_resume, skipped_lines
    from .ray_fs import UriFiles, check_inputs, is_uri
    from .ray_job import RayScoreOptions, init_ray, score_to_directory

    with settings_as_usage_errors():
        check_resume(resume, overwrite)
        if "-" in inputs:
            raise click.UsageError("loda-score-ray does not read paths from stdin; use @FILE")
    try:  # local paths and URIs (s3://, gs://, file://, ...: docs/ray.md)
        check_inputs(inputs, UriFiles())
    except InputError as exc:
        raise click.UsageError(first_line(exc)) from None

    def same(spec: str) -> str:
        return spec.rstrip("/") if is_uri(spec) else os.path.abspath(spec)

    if any(same(spec.lstrip("@")) == same(output) for spec in inputs):
        raise click.UsageError(f"--output {output} is also an INPUT")
    options = RayScoreOptions(
        model=model,
        backend=backend,
        device=device,
        threads=threads,
        batch_size=batch_size,
        crops=crops,
        layout=layout,
        seed=seed,
        max_pixels=max_pixels or None,
        max_member_bytes=max_member_bytes,
        fmt=fmt,
        resume=resume,
        overwrite=overwrite,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        files_per_task=files_per_task,
        max_retries=max_retries,
        rows_per_file=rows_per_file,
        progress=not no_progress,
    )
    started = init_ray(ray_address or os.environ.get("RAY_ADDRESS"), num_cpus)
    try:
        stats = score_to_directory(inputs, output, options, log=_stderr)
    finally:
        if started:
            import ray

            ray.shutdown()
    for line in [stats.summary(output), *skipped_lines(stats.skipped)]:
        _stderr(line)
    return EXIT_FAILED if stats.failed or stats.resumed_failed else EXIT_OK


def _stderr(message: str) -> None:
    click.echo(f"loda-score-ray: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 2, user errors 1 (one line), Ctrl-C 130."""
    from .cli import run_score_command

    run_score_command(score_ray_command, "loda-score-ray", argv)


if __name__ == "__main__":
    main()
