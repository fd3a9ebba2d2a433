"""``loda-train`` and ``loda-eval``: the paper's protocol from the command line.

``--data`` names a dataset as ``KIND:ROOT`` (``koniq10k``, ``kadid10k``, ``live``, ``tid2013``,
``livec``, ``spaq``, ``flive``, ``csv``) or a generic ``.csv`` file (``path,mos[,ref]``).

Multi-GPU: ``torchrun --nproc_per_node N -m loda.train.cli --data ... --out ...`` runs the same
training with DistributedDataParallel (global batch split across the N processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from loda.clitools import parse_data_spec, run
from loda.config import list_configs
from loda.train import protocol

DEFAULT_SPLITS = 10
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
LAYOUT_OPTION = click.option(
    "--layout",
    type=click.Choice(["grid", "random"]),
    default="grid",
    show_default=True,
    help="Evaluation crops: the deterministic grid, or the authors' seeded random crops.",
)


# The training options of loda-train and loda-eval-splits (declarations: one list).
TRAIN_OPTIONS = [
    click.option(
        "--data",
        "data_spec",
        required=True,
        help="KIND:ROOT[?KEY=VALUE&...] (reader options) or a generic .csv file.",
    ),
    click.option(
        "--config",
        "config_name",
        default="loda_b16",
        show_default=True,
        type=click.Choice(list_configs()),
    ),
    click.option("--vit-weights", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--cnn-weights", type=click.Path(dir_okay=False, path_type=Path)),
    click.option(
        "--random-init",
        is_flag=True,
        help="Train on random-init backbones (no pretrained weights needed).",
    ),
    click.option(
        "--split-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Splits JSON (made and saved beside the results if absent).",
    ),
    click.option("--split-seed", type=NON_NEGATIVE, default=0, show_default=True),
    click.option("--epochs", type=POSITIVE, default=10, show_default=True),
    click.option("--batch-size", type=POSITIVE, default=128, show_default=True),
    click.option(
        "--micro-batch",
        type=POSITIVE,
        default=None,
        help="Accumulate gradients over batch-size/micro-batch steps.",
    ),
    click.option(
        "--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True
    ),
    click.option("--backbone-lr", type=float, default=None),
    click.option("--weight-decay", type=float, default=0.01, show_default=True),
    click.option(
        "--crops-per-image",
        type=POSITIVE,
        default=None,
        help="Training crops per image (default: per dataset, as the authors).",
    ),
    click.option(
        "--train-backbones",
        type=click.Choice(["none", "cnn", "all"]),
        default="none",
        show_default=True,
    ),
    click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True),
    click.option(
        "--cache-mb",
        type=NON_NEGATIVE,
        default=1024,
        show_default=True,
        help="In-memory cache of resized training images, MB per process (0: none).",
    ),
    click.option(
        "--decode",
        type=click.Choice(["exact", "fast"]),
        default="exact",
        show_default=True,
        help="Training images: exact decode, or fast (JPEGs decoded at a reduced scale; "
        "for camera-size photos). Evaluation and the checkpoint stay exact.",
    ),
    click.option("--device", default="auto", show_default=True),
    click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True),
    click.option(
        "--amp/--no-amp",
        default=None,
        help="Mixed precision: fp16/bf16 on CUDA, bf16 on CPU (default: on CUDA).",
    ),
    click.option(
        "--channels-last/--no-channels-last",
        default=True,
        show_default=True,
        help="NHWC layout for the convolutions.",
    ),
    click.option(
        "--synthetic-per-ref",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Demo set only: add this many new distortions of each TRAINING reference, "
        "labelled by the demo's pseudo-MOS rule (made in OUT/synthetic; see loda.data.synthetic).",
    ),
]


def train_options(f):
    for option in reversed(TRAIN_OPTIONS):
        f = option(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@train_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split-index", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--num-splits", type=POSITIVE, default=DEFAULT_SPLITS, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the newest epoch checkpoint in --out.")
@click.option("--baseline", is_flag=True, help="Also evaluate the untrained model first.")
def train_cmd(out_dir, split_index, num_splits, resume, baseline, **opts) -> None:
    """Train LoDa on one split of a dataset and evaluate the last epoch on its test part."""
    protocol.init_distributed()
    kind, dataset = parse_data_spec(opts["data_spec"])
    out_dir.mkdir(parents=True, exist_ok=True)
    splits, split_path = protocol.splits_for(
        dataset, opts["split_file"], out_dir, num_splits, opts["split_seed"]
    )
    report = protocol.train_and_eval(
        opts, kind, dataset, splits, split_path, split_index, out_dir,
        resume=resume, baseline=baseline,
    )  # fmt: skip
    if "trained" in report:
        (out_dir / "results.json").write_text(json.dumps(report, indent=2))
        click.echo(
            f"wrote {report['checkpoint']} and {out_dir / 'results.json'}; next: "
            f"loda-eval {report['checkpoint']} --data {opts['data_spec']} "
            f"--split-file {split_path} --split-index {split_index}",
            err=True,
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_spec",
    required=True,
    help="KIND:ROOT[?KEY=VALUE&...] (reader options) or a generic .csv file.",
)
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--split-index",
    type=NON_NEGATIVE,
    default=None,
    help="Evaluate this split's test part (default: every image).",
)
@LAYOUT_OPTION
@click.option(
    "--seed",
    "--crop-seed",
    "seed",
    type=NON_NEGATIVE,
    default=0,
    show_default=True,
    help="Seed of the random layout.",
)
@click.option("--crops", type=POSITIVE, default=15, show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the checkpoint with the fitted calibration here (default: in place).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def eval_cmd(
    checkpoint, data_spec, split_file, split_index, layout, seed, crops, output, json_path
) -> None:
    """Evaluate CHECKPOINT on a dataset (SRCC/PLCC/KRCC/RMSE) and store the fitted score
    calibration in its metadata. The paper's K-split protocol: ``loda-eval --splits K --data ...
    --out DIR [training options]`` (the same as ``loda-eval-splits``)."""
    from loda.data.splits import Splits

    if checkpoint is None:
        raise click.UsageError(
            "give a CHECKPOINT (or --splits K --out DIR to train and evaluate K splits)"
        )
    _kind, dataset = parse_data_spec(data_spec)
    if output is not None:
        from loda.atomic import check_not_an_input

        data_file = data_spec.partition("?")[0].rpartition(":")[2]
        inputs = [data_file, *(s.path for s in dataset.samples)]
        check_not_an_input(output, inputs, "an input of the evaluation")
    samples = dataset.samples
    if split_index is not None:
        if split_file is None:
            raise click.UsageError("--split-index needs --split-file")
        _, samples = Splits.load(split_file).select(dataset, split_index)
    target = output or checkpoint
    result = protocol.evaluate_checkpoint(
        checkpoint, dataset, samples, layout=layout, seed=seed, crops=crops, target=target,
        provenance={
            "data": f"{dataset.name} ({dataset.root})",
            "split_file": str(split_file) if split_file else None,
            "split_index": split_index,
            "layout": layout,
            "crops": crops,
            "crop_seed": seed if layout == "random" else None,
        },
    )  # fmt: skip
    report = {"checkpoint": str(target), "data": data_spec, **result.to_dict()}
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    click.echo("metric  value")
    for k in ("srcc", "plcc", "krcc", "rmse"):
        click.echo(f"{k.upper():6s}  {result.metrics[k]:.4f}")
    click.echo(f"N       {result.metrics['n']}")
    click.echo(f"calibration stored in {target}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@train_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--splits",
    "num_splits",
    type=POSITIVE,
    default=DEFAULT_SPLITS,
    show_default=True,
    help="Train and evaluate this many splits; report medians (the paper: 10).",
)
@LAYOUT_OPTION
@click.option(
    "--crop-seed",
    type=NON_NEGATIVE,
    default=0,
    show_default=True,
    help="Seed of the random layout (--seed is the training seed here).",
)
def eval_splits_cmd(out_dir, num_splits, layout, crop_seed, **opts) -> None:
    """The paper's protocol: train and evaluate K seeded 80/20 splits, report the medians."""
    kind, dataset = parse_data_spec(opts["data_spec"])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = protocol.run_splits(
        opts, kind, dataset, out_dir, num_splits, layout=layout, crop_seed=crop_seed
    )
    reports, medians = summary["per_split"], summary["median"]
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    click.echo("split  SRCC    PLCC    KRCC    RMSE")
    for r in reports:
        m = r["trained"]
        click.echo(
            f"{r['split']:5d}  {m['srcc']:.4f}  {m['plcc']:.4f}  {m['krcc']:.4f}  {m['rmse']:.4f}"
        )
    click.echo(
        f"median {medians['srcc']:.4f}  {medians['plcc']:.4f}  {medians['krcc']:.4f}  "
        f"{medians['rmse']:.4f}"
    )
    click.echo(f"wrote {out_dir / 'results.json'}", err=True)


def train_main() -> None:
    run(train_cmd, prog_name="loda-train")


def eval_main() -> None:
    """``loda-eval CKPT --data ...`` evaluates a checkpoint; ``loda-eval --splits K --data ...
    --out DIR [training options]`` runs the paper's K-split protocol (= ``loda-eval-splits``)."""
    if any(a == "--splits" or a.startswith("--splits=") for a in sys.argv[1:]):
        run(eval_splits_cmd, prog_name="loda-eval")
    else:
        run(eval_cmd, prog_name="loda-eval")


def eval_splits_main() -> None:
    run(eval_splits_cmd, prog_name="loda-eval-splits")


if __name__ == "__main__":
    # `python -m loda.train.cli` / `torchrun -m loda.train.cli` run loda-train.
    train_main()
