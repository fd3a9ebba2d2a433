"""The ``loda-score`` job: score INPUTs into one result file (or stdout), resumable and sharded.

:func:`run_score_job` does what the command does between parsing its options and choosing an
exit code, from resolved :class:`ScoreSettings`:

- check the settings against the files before anything is opened: an existing output needs
  ``resume`` or ``overwrite``; an output the run would read (an INPUT, a listed or walked file,
  the model) is refused (:class:`SettingsError`, the command's usage error);
- open the model, write the run record beside the output (with ``resume`` it must match), and
  score the inputs of this shard that the output does not hold yet, in input order;
- stop cleanly on Ctrl-C (``KeyboardInterrupt``), SIGTERM (raised in the main thread while the
  job runs) and a stdout closed by its reader: the rows written so far are complete and
  flushed, so a rerun with ``resume`` finishes.

It returns a :class:`ScoreResult`; ``report()`` gives the closing lines. Progress lines go to
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loda.errors import LodaError, first_line
from loda.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig

from .inputs import (
    InputError,
    check_specs,
    is_archive_name,
    is_image_name,
    iter_input_files,
    iter_inputs,
    member_cap,
    normalise_key,
    shard_of,
)
from .output import ResultRow, ResultWriter, format_for, read_statuses, write_run_record
from .pipeline import PipelineOptions, RunStats, default_jobs, score_items
from .scorer import Scorer, backend_for_path

__all__ = [
    "OUTCOMES",
    "ScoreResult",
    "ScoreSettings",
    "SettingsError",
    "check_inputs",
    "check_resume",
    "run_score_job",
    "skipped_lines",
    "summary_line",
]

log = logging.getLogger(__name__)

# ok: every input scored; failed: some have error rows (now, or from before with resume);
# interrupted (Ctrl-C), terminated (SIGTERM), broken-pipe (stdout closed): stopped early.
OUTCOMES = ("ok", "failed", "interrupted", "terminated", "broken-pipe")


class SettingsError(LodaError):
    """A setting the user must change; nothing was opened or written (a usage error)."""


@dataclass(frozen=True)
class ScoreSettings:
    """What a scoring run needs, resolved (``loda-score``'s options, one field each)."""

    inputs: tuple[str, ...]
    model: str
    output: str = "-"  # "-": stdout
    fmt: str | None = None  # csv or jsonl; None: from the output's suffix
    backend: str | None = None  # None: from the model's suffix
    device: str = "auto"
    threads: int | None = None
    precision: str | None = None  # torch backend only
    cache_dir: str | None = None  # tensorrt-rtx only
    cuda_graph: bool = False  # tensorrt-rtx only
    batch_size: int | None = None
    crops: int | None = None
    layout: str | None = None
    decode: str | None = None  # exact or fast; None: the model's
    seed: int = 0
    jobs: int | None = None  # decode workers; None: the usable cores; 0: in-process
    queue: int | None = None
    resume: bool = False
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (I, N): shard I of N
    max_pixels: int = DEFAULT_MAX_PIXELS  # 0: no limit
    max_member_bytes: int | None = None
    progress: bool = True

    @property
    def to_stdout(self) -> bool:
        return self.output == "-"


@dataclass
class ScoreResult:
    """What a run did; ``outcome`` is one of :data:`OUTCOMES`."""

    settings: ScoreSettings
    jobs: int
    outcome: str = "ok"
    stats: RunStats | None = None  # None when the run stopped early
    seconds: float = 0.0
    rows: int = 0  # rows written by this run
    failed_rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    already: int = 0  # rows in the output before this run (resume)
    resumed: int = 0  # inputs left out because the output holds them
    resumed_failed: int = 0  # ... of them with an error row
    other_shards: int = 0

    @property
    def where(self) -> str:
        return "stdout" if self.settings.to_stdout else self.settings.output

    def report(self) -> list[str]:
        """The closing lines: what was scored, how fast, what was skipped, and warnings."""
        if self.outcome == "broken-pipe":
            return [
                f"stdout was closed by its reader (broken pipe) after {self.rows} row(s); stopped"
            ]
        if self.outcome in ("interrupted", "terminated") or self.stats is None:
            return [
                f"interrupted after {self.rows} row(s) in {self.seconds:.1f}s; {self.where} is "
                "consistent: rerun with --resume to finish"
            ]
        return [*self._summary(self.stats), *skipped_lines(self.skipped), *self._warnings()]

    def _summary(self, stats: RunStats) -> list[str]:
        line = summary_line(
            ok=stats.ok,
            images=stats.images,
            failed=stats.failed,
            crops=stats.crops,
            seconds=self.seconds,
            inference=f"inference {stats.infer_seconds:.1f}s",
            where=self.where,
            skipped=len(self.skipped),
            resumed=self.resumed,
            resumed_failed=self.resumed_failed,
            more_notes=[f"{self.other_shards} in other shards"] if self.other_shards else [],
        )
        bottleneck = stats.bottleneck(self.jobs)
        return [line, bottleneck] if bottleneck else [line]

    def _warnings(self) -> list[str]:
        lines = []
        if self.already and not self.resumed:
            lines.append(
                f"warning: none of the {self.already} row(s) already in {self.settings.output} "
                "matched an input of this run (other inputs, or relative paths from another "
                "directory?)"
            )
        assert self.stats is not None
        if not (self.stats.images or self.skipped or self.resumed or self.other_shards):
            lines.append("warning: no images found in " + ", ".join(self.settings.inputs))
        return lines


def summary_line(
    *,
    ok: int,
    images: int,
    failed: int,
    crops: int,
    seconds: float,
    inference: str,
    where: str,
    skipped: int = 0,
    resumed: int = 0,
    resumed_failed: int = 0,
    more_notes: Sequence[str] = (),
) -> str:
    """The closing line of a scoring run (``loda-score``, ``loda-score-ray``): counts, what was
    left out, rates, ``inference`` (how long the model ran) and where the rows went."""
    notes = [f"{skipped} skipped"] if skipped else []
    if resumed:
        notes.append(f"{resumed} already done, {resumed_failed} of them failed")
    notes.extend(more_notes)
    rate = images / seconds if seconds > 0 else 0.0
    crop_rate = crops / seconds if seconds > 0 else 0.0
    return (
        f"scored {ok} of {images} image(s), {failed} failed"
        + (f" ({', '.join(notes)})" if notes else "")
        + f" in {seconds:.1f}s: {rate:.2f} images/s, {crop_rate:.1f} crops/s ({inference}) -> "
        + where
    )


def skipped_lines(skipped: Sequence[tuple[str, str]], most: int = 20) -> list[str]:
    """The first ``most`` skipped inputs with their reasons, then how many more."""
    lines = [f"  skipped {source}: {reason}" for source, reason in skipped[:most]]
    if len(skipped) > most:
        lines.append(f"  ... and {len(skipped) - most} more skipped")
    return lines


def check_resume(resume: bool, overwrite: bool) -> None:
    """Resume an output or overwrite it, not both (SettingsError)."""
    if resume and overwrite:
        raise SettingsError("--resume and --overwrite exclude each other")


def check_inputs(inputs: Sequence[str]) -> None:
    """Every INPUT exists (SettingsError naming the first that does not)."""
    try:
        check_specs(list(inputs))
    except InputError as exc:
        raise SettingsError(first_line(exc)) from None


def run_score_job(settings: ScoreSettings, *, stdin: Any = None) -> ScoreResult:
    """Score ``settings.inputs`` (paths named ``-`` are read from ``stdin``, default
    ``sys.stdin``); see the module docstring. Raises SettingsError before anything is opened,
    LodaError / OSError when the run cannot start or the model fails."""
    s = settings
    fmt = _check_output(s)
    stdin = sys.stdin if stdin is None else stdin
    if not s.to_stdout:
        stdin = _check_output_not_read(s, stdin)
    scorer = _open_scorer(s)
    try:
        cfg = _preprocess(s, scorer)
        result = ScoreResult(settings=s, jobs=default_jobs() if s.jobs is None else s.jobs)
        _log_start(s, scorer, cfg, result.jobs)
        done = _read_done(s, fmt)
        result.already = len(done)
        if not s.to_stdout:  # what decides the scores, beside the rows (checked on resume)
            info = scorer.backend.info
            record = {
                "model": info.path.name,
                "model_name": info.meta.model.name,
                "precision": info.precision,
                "preprocess": cfg.to_dict(),
                "seed": s.seed if cfg.layout == "random" else None,
            }
            write_run_record(s.output, record, resume=s.resume)
        _score(s, scorer, cfg, fmt, stdin, done, result)
    finally:
        scorer.close()
    if result.stats is not None:
        result.outcome = "failed" if result.stats.failed or result.resumed_failed else "ok"
    return result


def _check_output(s: ScoreSettings) -> str:
    """The output format, after the checks of the output path (SettingsError)."""
    fmt = format_for(None if s.to_stdout else s.output, s.fmt)
    check_resume(s.resume, s.overwrite)
    if s.to_stdout and s.resume:
        raise SettingsError("--resume needs an --output file")
    if not s.to_stdout:
        out_path = Path(s.output)
        _check_output_parents(s.output)
        if out_path.is_dir():
            raise SettingsError(f"--output {s.output} is a directory")
        if out_path.exists() and out_path.stat().st_size and not (s.resume or s.overwrite):
            raise SettingsError(
                f"--output {s.output} exists: pass --resume to continue it or --overwrite"
            )
    check_inputs(s.inputs)
    return fmt


def _check_output_parents(output: str) -> None:
    """A file where a folder of the output must be: one usage line (not "File exists")."""
    for parent in Path(output).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise SettingsError(f"--output {output}: {parent} is not a directory")
            return


def _check_output_not_read(s: ScoreSettings, stdin: Any) -> Any:
    """Refuse an output that the run would read (even with ``overwrite``), before it is opened.

    Every file the run will open is resolved first: named files, list files and the paths
    they list, files found by walking folders, archives (``inputs.iter_input_files``), and the
    model. Paths on stdin are read into a temporary file first so they can be checked too; the
    returned stream replays them. A new output inside a walked folder with an image or archive
    suffix would be found by the walk: refused as well.
    """
    import tempfile

    from loda.atomic import check_not_an_input

    out = Path(s.output)
    if out.exists():
        if "-" in s.inputs:
            source = getattr(stdin, "buffer", stdin)
            stdin = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 (process-long)
            for line in source:
                stdin.write(line if isinstance(line, bytes) else os.fsencode(line))
            stdin.seek(0)
        try:
            files = [*iter_input_files(list(s.inputs), stdin=stdin), s.model]
            check_not_an_input(out, files, "an input")
        except InputError as exc:
            raise SettingsError(first_line(exc)) from None
        if "-" in s.inputs:
            stdin.seek(0)
    elif (is_image_name(out.name) or is_archive_name(out.name)) and not out.name.startswith("."):
        parent = out.resolve().parent
        for spec in s.inputs:
            if spec != "-" and not spec.startswith("@") and os.path.isdir(spec):
                top = Path(spec).resolve()
                if parent == top or top in parent.parents:
                    raise LodaError(
                        f"--output {s.output} is inside the input folder {spec} with an image "
                        "or archive suffix: the run would read it; write it elsewhere"
                    )
    return stdin


def _open_scorer(s: ScoreSettings) -> Scorer:
    options: dict[str, Any] = {"device": s.device, "threads": s.threads}
    if s.cache_dir is not None or s.cuda_graph:
        options.update(cache_dir=s.cache_dir, cuda_graph=s.cuda_graph)
    if s.precision is not None:
        if (s.backend or backend_for_path(s.model)) != "torch":
            raise SettingsError(
                "--precision applies to the torch backend (.safetensors) only; ONNX and engine "
                "files carry their precision in the graph"
            )
        options["precision"] = s.precision
    return Scorer.open(s.model, backend=s.backend, batch_size=s.batch_size, **options)


def _preprocess(s: ScoreSettings, scorer: Scorer) -> PreprocessConfig:
    try:
        cfg = scorer.config(num_crops=s.crops, layout=s.layout)
    except ValueError as exc:
        raise SettingsError(first_line(exc)) from None
    return cfg if s.decode is None else dataclasses.replace(cfg, decode=s.decode)


def _log_start(s: ScoreSettings, scorer: Scorer, cfg: PreprocessConfig, jobs: int) -> None:
    info = scorer.backend.info
    log.info(
        f"model {info.path.name} ({info.meta.model.name}, {info.precision}) on "
        f"{scorer.backend.name}/{info.device}; {cfg.num_crops} {cfg.layout} crops of "
        f"{cfg.crop_size}px per image, batches of {scorer.batch_size} crops, {jobs} decode "
        f"worker(s)" + (f", shard {s.shard[0]}/{s.shard[1]}" if s.shard else "")
    )


def _read_done(s: ScoreSettings, fmt: str) -> dict[str, str]:
    """Normalised source -> status of the rows already in the output (with resume)."""
    if not (s.resume and Path(s.output).exists()):
        return {}
    done = {normalise_key(k): status for k, status in read_statuses(s.output, fmt).items()}
    errors = sum(status == "error" for status in done.values())
    log.info(f"resuming: {len(done)} input(s) already in {s.output} ({errors} error row(s))")
    return done


def _score(
    s: ScoreSettings,
    scorer: Scorer,
    cfg: PreprocessConfig,
    fmt: str,
    stdin: Any,
    done: dict[str, str],
    result: ScoreResult,
) -> None:
    """Run the pipeline, one row per result; an interrupt ends it with the output flushed."""
    from tqdm import tqdm

    member_bytes = s.max_member_bytes or member_cap(s.max_pixels or None)
    writer = ResultWriter(None if s.to_stdout else s.output, fmt, append=s.resume)
    bar = tqdm(
        desc="scoring",
        unit="img",
        file=sys.stderr,
        disable=not s.progress or None,
        dynamic_ncols=True,
    )
    if not bar.disable and "-" not in s.inputs:
        threading.Thread(target=_count, args=(s.inputs, s.shard, done, bar), daemon=True).start()

    def on_result(image: Any) -> None:
        writer.write(ResultRow.from_result(image))
        result.rows += 1  # the bar's own count stays 0 when it is disabled
        if not image.ok:
            result.failed_rows += 1
            bar.set_postfix(failed=result.failed_rows, refresh=False)
        bar.update(1)

    options = PipelineOptions(
        cfg=cfg,
        seed=s.seed,
        jobs=result.jobs,
        queue=s.queue,
        max_pixels=s.max_pixels or None,
        member_budget=2 * member_bytes,
    )
    items = _selected(s, stdin, member_bytes, done, result)
    start = time.perf_counter()
    try:
        with _sigterm_raises():
            result.stats = score_items(scorer, items, options, on_result)
    except KeyboardInterrupt:
        result.outcome = "interrupted"
    except _Terminated:
        result.outcome = "terminated"
    except BrokenPipeError:
        if not s.to_stdout:
            raise
        result.outcome = "broken-pipe"
        _stdout_to_devnull()
    finally:
        bar.close()
        writer.close()
        result.seconds = time.perf_counter() - start


def _selected(
    s: ScoreSettings, stdin: Any, member_bytes: int, done: dict[str, str], result: ScoreResult
) -> Iterator[Any]:
    """The inputs this run scores: of this shard, not in the output yet (counted in result)."""
    items = iter_inputs(
        list(s.inputs),
        stdin=stdin,
        skipped=lambda source, reason: result.skipped.append((source, reason)),
        max_member_bytes=member_bytes,
    )
    for item in items:
        left_out = _left_out(item.source, s.shard, done)
        if left_out is None:
            yield item
        elif left_out == "other_shards":
            result.other_shards += 1
        else:
            result.resumed += 1
            if done[normalise_key(item.source)] == "error":
                result.resumed_failed += 1  # an error row from before: this run failed too
        del item  # hold no member's bytes while the next one is read


def _left_out(source: str, shard: tuple[int, int] | None, done: Container[str]) -> str | None:
    """Why ``source`` is not scored in this run ("other_shards", "resumed"), or None.

    ``done`` holds normalised keys (``inputs.normalise_key``): ``./x`` matches ``x``.
    """
    if shard is not None and shard_of(source, shard[1]) != shard[0]:
        return "other_shards"
    if done and normalise_key(source) in done:
        return "resumed"
    return None


def _count(inputs: tuple[str, ...], shard: Any, done: Container[str], bar: Any) -> None:
    """Count the inputs in the background (names only) so the progress bar can show an ETA."""
    n = 0
    try:
        for item in iter_inputs(list(inputs), read_data=False):
            if _left_out(item.source, shard, done) is None:
                n += 1
    except Exception:  # the scoring run reports input problems itself
        return
    bar.total = n


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the output is flushed on the way out."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminated()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises _Terminated while the block runs (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdout_to_devnull() -> None:
    """After a broken pipe: send what is left to flush (ours, the interpreter's) nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
