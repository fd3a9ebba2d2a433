"""``loda-export``: LoDa checkpoint -> verified ONNX (FP32, or strongly typed FP16 for TensorRT).

::

    loda-export onnx CKPT -o model.onnx [--precision fp32|fp16] [--images DIR] [--opset 18]
                          [--verify/--no-verify] [--verify-images N]
    loda-export verify CKPT model.onnx [--images DIR] [--verify-images N]

Logs go to stderr; on success one line says what was written (precision, path, size, time)
followed by the next command to run. Exit codes: 0 ok, 1 failure (missing or non-LoDa
checkpoint, failed verification: the comparison table is printed first), 2 usage error.
torch, onnx and onnxruntime are imported only when a command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from loda.clitools import run

__all__ = ["PRECISIONS", "cli", "main"]


@dataclass(frozen=True)
class Precision:
    suffix: str  # default output name: <checkpoint stem><suffix>
    what: str
    next_command: str  # formatted with {onnx}, {stem} and {images}


#: The export targets: drives --precision, default file names and the "next:" hint.
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(
        suffix=".onnx",
        what="FP32 ONNX",
        next_command=(
            "loda-trt build {onnx} -o {stem}.engine  "
            "(or INT8: loda-calib int8 {onnx} --images {images} -o {stem}.int8.onnx)"
        ),
    ),
    "fp16": Precision(
        suffix=".fp16.onnx",
        what="FP16 ONNX (strongly typed)",
        next_command="loda-trt build {onnx} -o {stem}.engine",
    ),
}

_IMAGES_HELP = (
    "Real images for verification: a folder (recursive; a demo set is read through its CSV), "
    "an image, or a .zip/.tar archive. Default: the built-in demo set, made in a temporary "
    "directory."
)


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _check_checkpoint(path: Path) -> None:
    """Refuse a missing or non-LoDa checkpoint in one line, before torch is even imported."""
    from loda.metadata import read_safetensors_metadata

    read_safetensors_metadata(path)


def _stem(path: Path) -> str:
    return str(path)[: -len(".onnx")] if path.suffix == ".onnx" else str(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Export LoDa checkpoints to ONNX and verify them against PyTorch."""


@cli.command("onnx")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output .onnx file. Default: next to CKPT, named after it (.onnx / .fp16.onnx).",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default="fp32",
    show_default=True,
    help="fp16: FP32 export, then a strongly typed FP16 graph (LayerNorm, Softmax, reductions, "
    "input normalisation and head stay FP32; uint8 in, float32 out).",
)
@click.option("--images", type=click.Path(path_type=Path), default=None, help=_IMAGES_HELP)
@click.option(
    "--opset", type=click.IntRange(17, 23), default=18, show_default=True, help="ONNX opset."
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare with PyTorch in ONNX Runtime on real crops (max |d score| <= 1e-4; FP16: "
    "Spearman vs FP32 >= 0.999).",
)
@click.option(
    "--verify-images",
    type=click.IntRange(min=1),
    default=None,
    help="Images used for verification (15 crops each). Default: 16 (fp32), 50 (fp16, also "
    "its minimum).",
)
def onnx_command(
    checkpoint: Path,
    output: Path | None,
    precision: str,
    images: Path | None,
    opset: int,
    verify: bool,
    verify_images: int | None,
) -> None:
    """Export CHECKPOINT (a LoDa .safetensors) to one self-contained ONNX file."""
    _check_checkpoint(checkpoint)
    from loda.calib.fp16 import Fp16Error
    from loda.export.onnx import ParityError, export_onnx

    target = PRECISIONS[precision]
    if output is None:
        output = checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + target.suffix)
    try:
        report = export_onnx(
            checkpoint,
            output,
            opset=opset,
            precision=precision,
            verify=verify,
            images=images,
            verify_images=verify_images,
        )
    except ParityError as exc:
        _echo(exc.report.table())
        _echo(f"{output} was not written")
        raise
    except Fp16Error as exc:
        if exc.report is not None:
            _echo(exc.report.table())
        _echo(f"{output} was not written")
        raise
    checks = []
    if report.parity is not None:
        checks.append(report.parity.summary())
    else:
        checks.append("not verified")
    if report.fp16 is not None:
        checks.append(report.fp16.summary())
    if report.fp16 is not None and report.fp16.verified:
        _echo(report.fp16.table())
    _echo(
        f"loda-export: {target.what} written to {report.path} ({report.size_mb:.1f} MB, "
        f"{report.total_seconds:.1f} s; {'; '.join(checks)})"
    )
    hint = target.next_command.format(
        onnx=report.path, stem=_stem(report.path), images=images or "DIR"
    )
    _echo("next: " + hint)


@cli.command("verify")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None, help=_IMAGES_HELP)
@click.option(
    "--verify-images",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images used (15 crops each).",
)
def verify_command(
    checkpoint: Path, onnx_file: Path, images: Path | None, verify_images: int
) -> None:
    """Check an FP32 ONNX export against the CHECKPOINT it came from (PyTorch vs ONNX
    Runtime on real crops, max |d score| <= 1e-4, batch sizes 1 and 7 included)."""
    _check_checkpoint(checkpoint)
    from loda.onnx_files import check_onnx_file

    check_onnx_file(onnx_file)  # damaged, or external data outside its folder: one line
    from loda.export.onnx import ParityError, verify_onnx_against_checkpoint

    try:
        report = verify_onnx_against_checkpoint(
            checkpoint, onnx_file, images=images, verify_images=verify_images
        )
    except ParityError as exc:
        _echo(exc.report.table())
        raise
    _echo(report.table())
    _echo(f"loda-export: {onnx_file} matches {checkpoint} ({report.summary()})")


def main() -> None:
    run(cli, prog_name="loda-export")


if __name__ == "__main__":
    main()
