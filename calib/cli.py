"""``loda-calib``: FP32 LoDa ONNX -> INT8 Q/DQ ONNX, calibrated and verified on real images.

::

    loda-calib int8 model.onnx --images DIR|ARCHIVE [-o model.int8.onnx]
                    [--method minmax|entropy|percentile] [--target tensorrt|cpu]
                    [--calib-images N] [--verify-images DIR] [--verify-count N]
                    [--min-spearman 0.99] [--verify/--no-verify]
    loda-calib int8 model.onnx --data KIND:ROOT|file.csv ...   (images with MOS)

Calibration images are real photographs (a folder, an archive, or a dataset's images); none
means an error, never random data. Verification scores HELD-OUT images (``--verify-images``, or
the images of the source that calibration did not use) with both graphs in ONNX Runtime (CPU)
and needs Spearman(INT8, FP32) >= ``--min-spearman``; with MOS (``--data`` or a demo set
folder) SRCC vs MOS is printed for both. Logs go to stderr; on success one line says what was
written (path, size, time) and the next command. Exit codes: 0 ok, 1 failure (no images, failed
verification: the table is printed first), 2 usage error. onnx and onnxruntime are imported
only when the command runs (``loda.calib.int8`` itself needs only numpy at import).
"""

from __future__ import annotations

from pathlib import Path

import click

from loda.calib.int8 import (
    DEFAULT_CALIB_IMAGES,
    DEFAULT_VERIFY_IMAGES,
    METHODS,
    MIN_SPEARMAN,
    MIN_VERIFY_IMAGES,
    TARGETS,
)
from loda.clitools import run

__all__ = ["cli", "main"]

_NO_IMAGES = (
    "no calibration images: pass --images DIR|ARCHIVE or --data KIND:ROOT|CSV "
    "(INT8 calibration needs real images; it never uses random data)"
)


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _stem(path: Path) -> str:
    text = str(path)
    for suffix in (".fp32.onnx", ".onnx"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Calibrate LoDa ONNX graphs to lower precision (INT8 Q/DQ)."""


@cli.command("int8")
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Real calibration images: a folder (recursive; a demo set is read through its CSV, "
    "with MOS), a .zip/.tar archive, or one image.",
)
@click.option(
    "--data",
    "data_spec",
    default=None,
    help="Calibrate on a dataset's images (KIND:ROOT or a generic .csv file); brings MOS.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file. Default: next to MODEL, .int8.onnx (tensorrt) or .int8-cpu.onnx (cpu).",
)
@click.option(
    "--method",
    type=click.Choice(list(METHODS)),
    default="minmax",
    show_default=True,
    help="Activation range calibration (entropy and percentile build histograms: slower).",
)
@click.option(
    "--target",
    type=click.Choice(list(TARGETS)),
    default="tensorrt",
    show_default=True,
    help="tensorrt: symmetric s8 activations and weights (zero point 0), no output Q/DQ. "
    "cpu: u8 activations and s8 weights, the fast path of ONNX Runtime's x86 kernels.",
)
@click.option(
    "--calib-images",
    type=click.IntRange(min=1),
    default=DEFAULT_CALIB_IMAGES,
    show_default=True,
    help="Calibration images (15 crops each), spread over the sorted candidates.",
)
@click.option(
    "--verify-images",
    type=click.Path(path_type=Path),
    default=None,
    help="Held-out verification images (folder or archive). Default: the images of the source "
    "that calibration did not use.",
)
@click.option(
    "--verify-count",
    type=click.IntRange(min=MIN_VERIFY_IMAGES),
    default=DEFAULT_VERIFY_IMAGES,
    show_default=True,
    help="Held-out images used for verification.",
)
@click.option(
    "--min-spearman",
    type=click.FloatRange(-1.0, 1.0),
    default=MIN_SPEARMAN,
    show_default=True,
    help="Pass when Spearman(INT8 image scores, FP32 image scores) is at least this.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare INT8 with FP32 in ONNX Runtime (CPU) on held-out images.",
)
def int8_command(
    onnx_file: Path,
    images: Path | None,
    data_spec: str | None,
    output: Path | None,
    method: str,
    target: str,
    calib_images: int,
    verify_images: Path | None,
    verify_count: int,
    min_spearman: float,
    verify: bool,
) -> None:
    """Quantize MODEL.onnx (an FP32 loda-export ONNX) to INT8 with explicit Q/DQ nodes."""
    from loda.calib.int8 import Int8Error, quantize_onnx_int8
    from loda.errors import LodaError

    if images is not None and data_spec is not None:
        raise click.UsageError("pass either --images or --data, not both")
    if images is None and data_spec is None:
        raise LodaError(_NO_IMAGES)
    dataset = None
    if data_spec is not None:
        from loda.clitools import parse_data_spec

        _, dataset = parse_data_spec(data_spec)
    if output is None:
        output = Path(_stem(onnx_file) + TARGETS[target].suffix)
    try:
        report = quantize_onnx_int8(
            onnx_file,
            output,
            images=images,
            dataset=dataset,
            method=method,
            target=target,
            calib_images=calib_images,
            verify=verify,
            verify_images=verify_images,
            n_verify=verify_count,
            min_spearman=min_spearman,
        )
    except Int8Error as exc:
        if exc.report is not None:
            _echo(exc.report.table())
        raise
    _echo(report.table())
    spec = TARGETS[target]
    _echo(
        f"loda-calib: {spec.what} written to {report.path} ({report.size_mb:.1f} MB, "
        f"{report.seconds:.1f} s; {report.summary()})"
    )
    _echo("next: " + spec.next_command.format(onnx=report.path, stem=_stem(report.path)))


def main() -> None:
    run(cli, prog_name="loda-calib")


if __name__ == "__main__":
    main()
