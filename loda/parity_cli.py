"""``loda-parity``: score the same images with the PyTorch FP32 reference and with each exported
artifact, and print one table (see :mod:`loda.parity`).

::

    loda-parity CKPT ARTIFACT... --data CSV_OR_KIND:ROOT [--split-file FILE --split-index K
                [--subset test|train|all]] [--limit N] [--format table|markdown|json|csv]

The report goes to stdout, logs to stderr. Exit codes: 0 every artifact PASS or SKIP, 1 any FAIL
(the report is printed first) or a user error (one line), 2 usage error.
torch is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from .clitools import configure_logging, run
from .parity import FORMATS, TOLERANCES

__all__ = ["main", "parity_cmd"]


def _tolerance_help() -> str:
    return "; ".join(f"{name}: {t.describe()}" for name, t in TOLERANCES.items())


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Tolerances: " + _tolerance_help() + ". SKIP (backend unavailable here) is no failure.",
)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--data",
    "data_spec",
    required=True,
    help="Images with MOS: a generic .csv (path,mos[,ref]) or KIND:ROOT, as loda-eval takes it.",
)
@click.option(
    "--split-file",
    "split_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Splits JSON (loda-train writes OUT/splits.json); selects --subset of --split-index.",
)
@click.option(
    "--split-index",
    "--split",
    "split_index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Which split of --split-file.",
)
@click.option(
    "--subset",
    type=click.Choice(["test", "train", "all"]),
    default=None,
    help="Images to use: with --split-file default test (the held-out images), else all.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only N images, spread evenly over the selection (quick runs; at least 4).",
)
@click.option(
    "--crops",
    type=click.IntRange(min=1),
    default=None,
    help="Grid crops per image. Default: the checkpoint's (15).",
)
@click.option(
    "--batch-crops",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Crops per inference call (the reference's and every backend's).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the reference and the ONNX Runtime artifacts run (auto: CUDA when present).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Report format on stdout.",
)
@click.option(
    "--per-image",
    is_flag=True,
    help="JSON only: add every image's name, MOS and score per artifact.",
)
def parity_cmd(
    checkpoint: Path,
    artifacts: tuple[Path, ...],
    data_spec: str,
    split_file: Path | None,
    split_index: int,
    subset: str | None,
    limit: int | None,
    crops: int | None,
    batch_crops: int,
    device: str,
    fmt: str,
    per_image: bool,
) -> None:
    """Score the images of --data with CHECKPOINT in PyTorch FP32 (the reference) and with each
    ARTIFACT (.onnx fp32/fp16/int8 through ONNX Runtime, .engine through TensorRT when it can
    run here, .safetensors through PyTorch) on the same grid crops, and judge each artifact
    with the tolerance of its precision.

    Columns: SRCC/PLCC/KRCC against the MOS; dSRCC/dPLCC = artifact minus reference;
    max/mean/p99 |d| = absolute differences of per-image scores (mean of the crop scores) to
    the reference's (the per-crop maximum is in the JSON); img/s = images per second of
    inference alone, after one warm-up batch; needs = the smallest tolerance that would have
    passed. Exit 1 when any artifact FAILs.
    """
    from .clitools import parse_data_spec
    from .data.splits import Splits
    from .metadata import read_safetensors_metadata
    from .parity import ParityFailed, run_parity, select_samples

    meta, _ = read_safetensors_metadata(checkpoint)  # one-line error before torch is imported
    if per_image and fmt != "json":
        raise click.UsageError("--per-image needs --format json")
    if subset is None:
        subset = "test" if split_file is not None else "all"
    if subset != "all" and split_file is None:
        raise click.UsageError(f"--subset {subset} needs --split-file")
    _kind, dataset = parse_data_spec(data_spec)
    splits = Splits.load(split_file) if split_file is not None else None
    samples, what = select_samples(
        dataset, splits=splits, split_index=split_index, subset=subset, limit=limit
    )
    trained = meta.provenance.get("split")
    if subset == "test" and isinstance(trained, dict) and trained.get("index") != split_index:
        click.echo(
            f"loda-parity: note: {checkpoint} was trained on split {trained.get('index')}, "
            f"these are the test images of split {split_index}",
            err=True,
        )

    report = run_parity(
        checkpoint,
        samples,
        artifacts,
        device=device,
        num_crops=crops,
        batch_crops=batch_crops,
        data=f"{dataset.name} ({what})",
    )
    click.echo(report.format(fmt, per_image=per_image))
    failed = report.failed
    if failed:
        names = ", ".join(r.artifact for r in failed)
        raise ParityFailed(f"{len(failed)} of {len(artifacts)} artifact(s) FAIL parity: {names}")
    click.echo(f"loda-parity: {report.summary()}", err=True)


def main() -> None:
    # run_parity's progress lines carry the command's name, as its other lines do.
    configure_logging(name="loda.parity", prefix="loda-parity: ")
    run(parity_cmd, prog_name="loda-parity")


if __name__ == "__main__":
    main()
