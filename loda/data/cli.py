"""``loda-data``: make the datasets the LoDa tools train and evaluate on.

``loda-data demo DIR`` writes the built-in KADID-like demo set (see ``loda.data.demo``):
offline, in well under a minute, byte-identical for a given seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from loda.atomic import atomic_path, check_not_an_input
from loda.clitools import run
from loda.sources import manifest_path

__all__ = ["cli", "main"]


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 512x384, got {value!r}") from None
    return w, h


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """LoDa datasets: make the built-in demo IQA set; pack images into a tar."""


@cli.command("demo")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--size",
    default="512x384",
    show_default=True,
    callback=_parse_size,
    help="Width x height of every image.",
)
@click.option(
    "--force", is_flag=True, help="Write into a non-empty directory that is not a demo set."
)
def demo_cmd(directory: Path, seed: int, size: tuple[int, int], force: bool) -> None:
    """Write the KADID-like demo set into DIR: real photos shipped with scikit-image and
    scikit-learn, 8 distortion types x 5 levels, pseudo-MOS from an SSIM rule (1-5).

    Makes DIR/demo.csv (path,mos,ref), DIR/images/, DIR/references/ and DIR/dataset.json.
    Same seed and package versions give byte-identical files. DIR must be new, empty or an
    earlier demo set (rewritten in place) unless --force.
    """
    from loda.data.demo import make_demo_set

    started = time.perf_counter()
    csv_path = make_demo_set(directory, seed=seed, size=size, force=force)
    with open(csv_path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    refs = len({r[2] for r in rows})
    mos = [float(r[1]) for r in rows]
    click.echo(
        f"wrote demo IQA set {csv_path} ({len(rows)} images of {refs} references, "
        f"{size[0]}x{size[1]}, seed {seed}, MOS {min(mos):.2f}-{max(mos):.2f}) in "
        f"{time.perf_counter() - started:.1f} s; next: loda-train --data {csv_path}",
        err=True,
    )


@cli.command("pack")
@click.argument("csv_path", metavar="CSV", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The .tar to write.",
)  # fmt: skip
@click.option(
    "--splits", "splits_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="A splits JSON (loda-train writes OUT/splits.json); default: every image.",
)  # fmt: skip
@click.option("--split", "split_index", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--subset", type=click.Choice(["test", "train"]), default="test", show_default=True)
def pack_cmd(
    csv_path: Path, output: Path, splits_path: Path | None, split_index: int, subset: str
) -> None:
    """Pack the images of a generic CSV dataset (all, or one subset of a split) into a .tar.

    Members are named by the image paths relative to the CSV's folder. A manifest OUTPUT.csv
    (source,mos,ref with source = OUTPUT::member, as loda-score names members) goes beside
    it, so scores can be joined with their MOS.
    """
    import csv
    import tarfile

    from loda.data.datasets import read_dataset
    from loda.data.splits import Splits

    ctx = click.get_current_context()
    given = [
        f"--{name.replace('_index', '')}"
        for name in ("split_index", "subset")
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if given and splits_path is None:
        raise click.UsageError(f"{' and '.join(given)} need(s) --splits")
    dataset = read_dataset("csv", csv_path)
    samples = dataset.samples
    what = f"all {len(samples)} images"
    if splits_path is not None:
        train, test = Splits.load(splits_path).select(dataset, split_index)
        samples = test if subset == "test" else train
        what = f"the {subset} images of split {split_index} ({len(samples)} images)"
    if not samples:
        raise click.UsageError("nothing to pack: the selection is empty")
    check_not_an_input(output, [csv_path, *(s.path for s in dataset.samples)], "an input")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp, tarfile.open(tmp, "w") as tf:
        for sample in samples:
            tf.add(sample.path, arcname=sample.name, recursive=False)
    manifest = manifest_path(output)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "mos", "ref"])
        for sample in samples:
            writer.writerow([f"{output}::{sample.name}", repr(sample.mos), sample.ref or ""])
    click.echo(
        f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {what} of {csv_path}) and "
        f"its manifest {manifest}; next: loda-score {output} -m MODEL -o scores.csv",
        err=True,
    )


def main() -> None:
    run(cli, prog_name="loda-data")


if __name__ == "__main__":
    main()
