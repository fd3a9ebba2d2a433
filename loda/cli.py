"""``loda``: build, import, inspect and apply LoDa checkpoints from the command line."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import click

from .clitools import run
from .config import list_configs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """LoDa reference model: checkpoints in, scores out."""


@cli.command("configs")
def configs_cmd() -> None:
    """List the named model configurations (the paper's and its ablations)."""
    from .config import CONFIGS

    for name in list_configs():
        c = CONFIGS[name]
        click.echo(
            f"{name:26s} vit={c.vit_timm_name} cnn={c.cnn_timm_name} r={c.latent_dim} "
            f"h={c.cross_attn_heads} N={c.num_interactions}"
        )


@cli.command("create")
@click.argument("config", type=click.Choice(list_configs()))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--pretrained", is_flag=True, help="Backbones from files or the HF cache (required).")
@click.option("--vit-weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cnn-weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for random init."
)
def create_cmd(config, output, pretrained, vit_weights, cnn_weights, seed) -> None:
    """Build CONFIG and save it as a LoDa checkpoint (random-init unless --pretrained)."""
    import torch

    from .checkpoint import save_checkpoint
    from .model import create_model

    started = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model(
        config, pretrained=pretrained, vit_weights=vit_weights, cnn_weights=cnn_weights
    )
    backbones = "pretrained" if (pretrained or vit_weights or cnn_weights) else "random-init"
    save_checkpoint(
        model,
        output,
        provenance={"source": f"loda create {config} ({backbones} backbones, seed {seed})"},
    )
    _success(output, started, f"loda info {output}")


@cli.command("import-authors")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--config", default="loda_b16", show_default=True, type=click.Choice(list_configs()))
@click.option("--vit-weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cnn-weights", type=click.Path(dir_okay=False, path_type=Path))
def import_authors_cmd(checkpoint, output, config, vit_weights, cnn_weights) -> None:
    """Convert an authors' checkpoint ({"learner", "bn_buffer"}) plus the two backbone
    weight files (or the HF cache) into one self-contained LoDa checkpoint."""
    from .checkpoint import import_authors_checkpoint, save_checkpoint

    started = time.perf_counter()
    model = import_authors_checkpoint(
        checkpoint, config=config, vit_weights=vit_weights, cnn_weights=cnn_weights
    )
    save_checkpoint(model, output, provenance={"source": f"authors' checkpoint {checkpoint}"})
    _success(output, started, f"loda info {output}")


@cli.command("info")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
def info_cmd(checkpoint) -> None:
    """Print a checkpoint's metadata record as JSON (no tensors are loaded)."""
    from .metadata import read_safetensors_metadata
    from .onnx_files import check_onnx_file

    if checkpoint.suffix.lower() == ".onnx":
        check_onnx_file(checkpoint)  # a hostile or damaged model: one line naming why
    meta, _ = read_safetensors_metadata(checkpoint)
    click.echo(json.dumps(meta.to_dict(), indent=2, sort_keys=True))


@cli.command("predict")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["grid", "random"]),
    default=None,
    help="Crop layout (default: the checkpoint's).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the random layout.",
)
def predict_cmd(checkpoint, images, layout, seed) -> None:
    """Score IMAGES with the PyTorch reference; CSV (path, score, spread[, mos]) on stdout."""
    import dataclasses

    from .checkpoint import load_checkpoint
    from .inference import score_image

    model, meta = load_checkpoint(checkpoint)
    cfg = meta.preprocess if layout is None else dataclasses.replace(meta.preprocess, layout=layout)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    header = ["path", "score", "spread"] + (["mos"] if meta.calibration else [])
    writer.writerow(header)
    for image in images:
        result = score_image(model, image, cfg, seed=seed if cfg.layout == "random" else None)
        row = [str(image), f"{result.score:.6f}", f"{result.spread:.6f}"]
        if meta.calibration:
            row.append(f"{float(meta.calibration([result.score])[0]):.4f}")
        writer.writerow(row)


def _success(path: Path, started: float, next_command: str) -> None:
    size_mb = path.stat().st_size / 1e6
    click.echo(
        f"wrote {path} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s; "
        f"next: {next_command}",
        err=True,
    )


def main() -> None:
    run(cli, prog_name="loda")


if __name__ == "__main__":
    main()
