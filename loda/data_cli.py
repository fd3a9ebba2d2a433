"""``loda-data``: make the datasets the LoDa tools train and evaluate on.

``loda-data demo DIR`` writes the built-in KADID-like demo set (see ``loda.demo_data``):
offline, in well under a minute, byte-identical for a given seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .clitools import run

__all__ = ["cli", "main"]


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 512x384, got {value!r}") from None
    return w, h


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """LoDa datasets: make the built-in demo IQA set."""


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
    from .demo_data import make_demo_set

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


def main() -> None:
    run(cli, prog_name="loda-data")


if __name__ == "__main__":
    main()
