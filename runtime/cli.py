"""``loda-score``: score image files, directories and archives with a LoDa artifact.

Exit codes: 0 every input scored; 1 some inputs failed (they have error rows, written by this
run or, with --resume, by an earlier one) or the run failed (a one-line error); 2 usage error
(bad option, missing INPUT, bad --shard); 130 interrupted by Ctrl-C, 143 by SIGTERM (the output
is flushed and consistent: rerun with --resume to finish); 141 stdout closed by its reader (a
broken pipe, e.g. ``| head``: one line on stderr, the rest of the run is dropped).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Container
from pathlib import Path
from typing import Any

import click

from loda.errors import LodaError, first_line
from loda.preprocess import DEFAULT_MAX_PIXELS, LAYOUTS

__all__ = ["main", "score_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM = 130, 141, 143  # 128 + the signal number


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the output is flushed on the way out."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminated()


def _shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from .inputs import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(first_line(exc)) from None


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "INPUT: image files, directories (recursive, sorted), .tar/.tar.gz/.tgz/.zip archives "
        "(read member by member, never extracted), @list.txt (one path per line) or - (paths "
        "on stdin). Rows: source (archive.tar::member for members), score, spread (std of "
        "the crop scores), mos (when the model carries a calibration), width, height, status "
        "(ok/error), error. Exit: 0 all scored, 1 some failed (now or, with --resume, "
        "before), 2 usage error, 130/143 interrupted (rerun with --resume), 141 stdout closed."
    ),
)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-m", "--model", "model", required=True, help="Artifact: .onnx, .engine or .safetensors."
)
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
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu or cuda (backend-dependent)."
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=None, help="Inference threads (1-256)."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    help="torch backend only: fp32 (default) or fp16/bf16 autocast on CUDA. ONNX and engine "
    "files carry their precision in the graph.",
)
@click.option(
    "--crops", type=click.IntRange(1, 1000), default=None, help="Crops per image (15; 1-1000)."
)
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Crop layout (grid).")
@click.option(
    "--decode",
    type=click.Choice(["exact", "fast"]),
    default=None,
    help="exact (the model's preprocessing, default) or fast: JPEGs decoded at a reduced scale "
    "(for camera-size photos; recorded in OUTPUT.json).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of --layout random.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=0),
    default=None,
    help="Decode worker processes (default: all cores; 0: decode in-process).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Crops per inference call (default 60: four 15-crop images).",
)
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
@click.option(
    "--max-pixels",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images (decoded or resized) over this many pixels; 0: no limit.",
)
@click.option(
    "--max-member-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse archive members over this many bytes, unread (default: 3 x --max-pixels "
    "+ 16 MiB, about 285 MB; 1 GiB with --max-pixels 0).",
)
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
    from tqdm import tqdm

    from .inputs import InputError, check_specs, iter_inputs, member_cap, normalise_key
    from .output import ResultRow, ResultWriter, format_for, read_statuses, write_run_record
    from .pipeline import PipelineOptions, default_jobs, score_items
    from .scorer import Scorer

    to_stdout = output == "-"
    fmt = format_for(None if to_stdout else output, fmt)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if to_stdout and resume:
        raise click.UsageError("--resume needs an --output file")
    if not to_stdout:
        out_path = Path(output)
        _check_output_parents(output)
        if out_path.is_dir():
            raise click.UsageError(f"--output {output} is a directory")
        if out_path.exists() and out_path.stat().st_size and not (resume or overwrite):
            raise click.UsageError(
                f"--output {output} exists: pass --resume to continue it or --overwrite"
            )
    try:
        check_specs(list(inputs))
    except InputError as exc:
        raise click.UsageError(first_line(exc)) from None
    stdin = sys.stdin
    if not to_stdout:
        stdin = _check_output_not_read(output, inputs, model)
    member_bytes = max_member_bytes or member_cap(max_pixels or None)

    log = _stderr
    options: dict[str, Any] = {"device": device, "threads": threads}
    if cache_dir is not None or cuda_graph:
        options.update(cache_dir=cache_dir, cuda_graph=cuda_graph)
    if precision is not None:
        from .scorer import backend_for_path

        if (backend or backend_for_path(model)) != "torch":
            raise click.UsageError(
                "--precision applies to the torch backend (.safetensors) only; ONNX and engine "
                "files carry their precision in the graph"
            )
        options["precision"] = precision
    scorer = Scorer.open(model, backend=backend, batch_size=batch_size, **options)
    try:
        cfg = scorer.config(num_crops=crops, layout=layout)
    except ValueError as exc:
        raise click.UsageError(first_line(exc)) from None
    if decode is not None:
        cfg = dataclasses.replace(cfg, decode=decode)
    jobs = default_jobs() if jobs is None else jobs
    info = scorer.backend.info
    log(
        f"model {info.path.name} ({info.meta.model.name}, {info.precision}) on "
        f"{scorer.backend.name}/{info.device}; {cfg.num_crops} {cfg.layout} crops of "
        f"{cfg.crop_size}px per image, batches of {scorer.batch_size} crops, {jobs} decode "
        f"worker(s)" + (f", shard {shard[0]}/{shard[1]}" if shard else "")
    )

    done: dict[str, str] = {}  # normalised source -> status of the rows already in --output
    if resume and Path(output).exists():
        done = {normalise_key(s): status for s, status in read_statuses(output, fmt).items()}
        errors = sum(status == "error" for status in done.values())
        log(f"resuming: {len(done)} input(s) already in {output} ({errors} error row(s))")
    skipped: list[tuple[str, str]] = []
    counts = {"resumed": 0, "resumed_failed": 0, "other_shards": 0, "rows": 0, "failed": 0}

    def selected():
        items = iter_inputs(
            list(inputs),
            stdin=stdin,
            skipped=lambda s, r: skipped.append((s, r)),
            max_member_bytes=member_bytes,
        )
        for item in items:
            left_out = _left_out(item.source, shard, done)
            if left_out is None:
                yield item
            else:
                counts[left_out] += 1
                if left_out == "resumed" and done[normalise_key(item.source)] == "error":
                    counts["resumed_failed"] += 1  # an error row from before: this run failed too
            del item  # hold no member's bytes while the next one is read

    if not to_stdout:  # what decides the scores, beside the rows (checked on --resume)
        record = {
            "model": info.path.name,
            "model_name": info.meta.model.name,
            "precision": info.precision,
            "preprocess": cfg.to_dict(),
            "seed": seed if cfg.layout == "random" else None,
        }
        write_run_record(output, record, resume=resume)
    writer = ResultWriter(None if to_stdout else output, fmt, append=resume)
    bar = tqdm(
        desc="scoring",
        unit="img",
        file=sys.stderr,
        disable=no_progress or None,
        dynamic_ncols=True,
    )
    if not bar.disable and "-" not in inputs:
        threading.Thread(target=_count, args=(inputs, shard, done, bar), daemon=True).start()

    def on_result(result: Any) -> None:
        writer.write(ResultRow.from_result(result))
        counts["rows"] += 1  # the bar's own count stays 0 when it is disabled
        if not result.ok:
            counts["failed"] += 1
            bar.set_postfix(failed=counts["failed"], refresh=False)
        bar.update(1)

    pipeline_options = PipelineOptions(
        cfg=cfg,
        seed=seed,
        jobs=jobs,
        queue=queue_size,
        max_pixels=max_pixels or None,
        member_budget=2 * member_bytes,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    interrupted: int | None = None
    start = time.perf_counter()
    stats = None
    try:
        stats = score_items(scorer, selected(), pipeline_options, on_result)
    except KeyboardInterrupt:
        interrupted = EXIT_SIGINT
    except _Terminated:
        interrupted = EXIT_SIGTERM
    except BrokenPipeError:
        if not to_stdout:
            raise
        interrupted = EXIT_SIGPIPE
        _stdout_to_devnull()
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        writer.close()
        scorer.close()
    seconds = time.perf_counter() - start
    written = counts["rows"]
    where = "stdout" if to_stdout else output
    if interrupted == EXIT_SIGPIPE:
        log(f"stdout was closed by its reader (broken pipe) after {written} row(s); stopped")
        return interrupted
    if interrupted is not None:
        log(
            f"interrupted after {written} row(s) in {seconds:.1f}s; {where} is consistent: "
            "rerun with --resume to finish"
        )
        return interrupted
    assert stats is not None
    rate = stats.images / seconds if seconds > 0 else 0.0
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} skipped")
    if counts["resumed"]:
        notes.append(f"{counts['resumed']} already done, {counts['resumed_failed']} of them failed")
    if counts["other_shards"]:
        notes.append(f"{counts['other_shards']} in other shards")
    log(
        f"scored {stats.ok} of {stats.images} image(s), {stats.failed} failed"
        + (f" ({', '.join(notes)})" if notes else "")
        + f" in {seconds:.1f}s: {rate:.2f} images/s, {stats.crops / seconds if seconds else 0:.1f}"
        f" crops/s (inference {stats.infer_seconds:.1f}s) -> {where}"
    )
    bottleneck = stats.bottleneck(jobs)
    if bottleneck:
        log(bottleneck)
    for source, reason in skipped[:20]:
        log(f"  skipped {source}: {reason}")
    if len(skipped) > 20:
        log(f"  ... and {len(skipped) - 20} more skipped")
    if done and not counts["resumed"]:
        log(
            f"warning: none of the {len(done)} row(s) already in {output} matched an input of "
            "this run (other inputs, or relative paths from another directory?)"
        )
    if not stats.images and not skipped and not counts["resumed"] and not counts["other_shards"]:
        log("warning: no images found in " + ", ".join(inputs))
    return EXIT_FAILED if stats.failed or counts["resumed_failed"] else EXIT_OK


def _left_out(source: str, shard: tuple[int, int] | None, done: Container[str]) -> str | None:
    """Why ``source`` is not scored in this run ("other_shards", "resumed"), or None.

    ``done`` holds normalised keys (``inputs.normalise_key``): ``./x`` matches ``x``.
    """
    from .inputs import normalise_key, shard_of

    if shard is not None and shard_of(source, shard[1]) != shard[0]:
        return "other_shards"
    if done and normalise_key(source) in done:
        return "resumed"
    return None


def _check_output_parents(output: str) -> None:
    """A file where a folder of --output must be: one usage line (not "File exists")."""
    for parent in Path(output).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise click.UsageError(f"--output {output}: {parent} is not a directory")
            return


def _check_output_not_read(output: str, inputs: tuple[str, ...], model: str) -> Any:
    """Refuse an --output that the run would read (even with --overwrite), before it is opened.

    Every file the run will open is resolved first: named files, list files and the paths
    they list, files found by walking folders, archives (``inputs.iter_input_files``), and the
    model. Paths on stdin are read into a temporary file first so they can be checked too; the
    returned stream replays them. A new output inside a walked folder with an image or archive
    suffix would be found by the walk: refused as well.
    """
    import tempfile

    from loda.atomic import check_not_an_input

    from .inputs import InputError, is_archive_name, is_image_name, iter_input_files

    stdin: Any = sys.stdin
    out = Path(output)
    if out.exists():
        if "-" in inputs:
            stdin = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 (process-long)
            source = getattr(sys.stdin, "buffer", sys.stdin)
            for line in source:
                stdin.write(line if isinstance(line, bytes) else os.fsencode(line))
            stdin.seek(0)
        try:
            check_not_an_input(
                out, [*iter_input_files(list(inputs), stdin=stdin), model], "an input"
            )
        except InputError as exc:
            raise click.UsageError(first_line(exc)) from None
        if "-" in inputs:
            stdin.seek(0)
    elif (is_image_name(out.name) or is_archive_name(out.name)) and not out.name.startswith("."):
        parent = out.resolve().parent
        for spec in inputs:
            if spec != "-" and not spec.startswith("@") and os.path.isdir(spec):
                top = Path(spec).resolve()
                if parent == top or top in parent.parents:
                    raise LodaError(
                        f"--output {output} is inside the input folder {spec} with an image or "
                        "archive suffix: the run would read it; write it elsewhere"
                    )
    return stdin


def _count(inputs: tuple[str, ...], shard: Any, done: Container[str], bar: Any) -> None:
    """Count the inputs in the background (names only) so the progress bar can show an ETA."""
    from .inputs import iter_inputs

    n = 0
    try:
        for item in iter_inputs(list(inputs), read_data=False):
            if _left_out(item.source, shard, done) is None:
                n += 1
    except Exception:  # the scoring run reports input problems itself
        return
    bar.total = n


def _stdout_to_devnull() -> None:
    """After a broken pipe: send what is left to flush (ours, the interpreter's) nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _stderr(message: str) -> None:
    click.echo(f"loda-score: {message}", err=True)


def run_score_command(command: click.Command, prog: str, argv: list[str] | None) -> None:
    """Run a scoring command (loda-score, loda-score-ray): usage errors exit 2, user errors 1
    (one line), interrupts 130 (a command that handles Ctrl-C itself returns its own code)."""
    from .inputs import InputError

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
