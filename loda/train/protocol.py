"""The paper's protocol as library steps: seeded splits, train one split and evaluate its test
part (the last epoch, as the paper), evaluate a checkpoint, and the K-split medians.

``loda-train`` / ``loda-eval`` / ``loda-eval-splits`` (:mod:`loda.train.cli`) parse options
into the ``opts`` mapping these functions read (the names of the training options) and print
what they return.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
from pathlib import Path
from typing import Any

from loda.errors import LodaError

log = logging.getLogger(__name__)

METRICS = ("srcc", "plcc", "krcc", "rmse")


def fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k.upper()} {m[k]:.4f}" for k in METRICS)


def init_distributed() -> None:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, else gloo)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def splits_for(dataset, split_file: Path | None, out_dir: Path, k: int, seed: int):
    """The splits of ``split_file`` when it exists; else ``k`` seeded splits saved there (or in
    ``out_dir/splits.json``)."""
    from loda.data.splits import Splits, make_splits

    if split_file is not None and split_file.is_file():
        return Splits.load(split_file), split_file
    splits = make_splits(dataset, k=k, seed=seed)
    path = split_file or out_dir / "splits.json"
    splits.save(path)
    return splits, path


def train_config(opts: dict[str, Any], kind: str):
    from loda.train.trainer import CROPS_PER_IMAGE, TrainConfig

    return TrainConfig(
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        micro_batch=opts["micro_batch"],
        lr=opts["lr"],
        backbone_lr=opts["backbone_lr"],
        weight_decay=opts["weight_decay"],
        crops_per_image=opts["crops_per_image"] or CROPS_PER_IMAGE[kind],
        seed=opts["seed"],
        train_backbones=opts["train_backbones"],
        workers=opts["workers"],
        device=opts["device"],
        amp=opts["amp"],
        channels_last=opts["channels_last"],
        cache_mb=opts["cache_mb"],
        decode=opts["decode"],
    )


def build_model(opts: dict[str, Any]):
    import torch

    from loda.model import create_model

    torch.manual_seed(opts["seed"])
    return create_model(
        opts["config_name"],
        pretrained=not opts["random_init"],
        vit_weights=opts["vit_weights"],
        cnn_weights=opts["cnn_weights"],
    )


@dataclasses.dataclass
class SplitRun:
    """What one split's training and evaluation share."""

    dataset: Any
    index: int
    out_dir: Path
    train_samples: list
    test_samples: list
    provenance: dict[str, Any]
    report: dict[str, Any]
    evaluation: dict[str, Any]


def train_and_eval(
    opts: dict[str, Any],
    kind: str,
    dataset,
    splits,
    split_path: Path,
    index: int,
    out_dir: Path,
    *,
    resume: bool = False,
    baseline: bool = False,
    layout: str = "grid",
    crop_seed: int = 0,
) -> dict[str, Any]:
    """Train on split ``index`` and evaluate its test part (the last epoch, as the paper) with
    the ``layout`` crops (``crop_seed`` seeds the random layout); returns the split's report
    (``trained`` and ``checkpoint`` only on the process that evaluates)."""
    from loda.preprocess import PreprocessConfig
    from loda.train.trainer import train

    cfg = train_config(opts, kind)
    model = build_model(opts)
    preprocess = PreprocessConfig()
    eval_preprocess = dataclasses.replace(preprocess, layout=layout)
    split = _split_run(dataset, splits, split_path, index, out_dir, preprocess, layout, crop_seed)
    if opts["synthetic_per_ref"]:
        _add_synthetic(split, opts["synthetic_per_ref"], cfg.seed)
    if baseline:
        base = _evaluate(model, split, eval_preprocess, crop_seed, progress=False)
        split.report["untrained"] = base.metrics
        log.info("split %d: untrained model  %s", index, fmt_metrics(base.metrics))
    result = train(
        model,
        split.train_samples,
        out_dir,
        cfg,
        preprocess=preprocess,
        resume=resume,
        provenance=split.provenance,
    )
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return split.report
    evaluated = _evaluate(result.model, split, eval_preprocess, crop_seed, progress=True)
    _save_final(result.model, split, preprocess, cfg, evaluated)
    split.report.update(
        trained=evaluated.metrics,
        checkpoint=str(out_dir / "model.safetensors"),
        train_seconds=round(result.seconds, 1),
        train_crops_per_second=round(result.crops_per_second, 2),
        losses=result.losses,
    )
    log.info(
        "split %d: trained model    %s (%.0f s training)",
        index,
        fmt_metrics(evaluated.metrics),
        result.seconds,
    )
    return split.report


def _split_run(dataset, splits, split_path, index, out_dir, preprocess, layout, crop_seed):
    train_samples, test_samples = splits.select(dataset, index)
    evaluation = {
        "layout": layout,
        "crops": preprocess.num_crops,
        "crop_seed": crop_seed if layout == "random" else None,
    }
    provenance: dict[str, Any] = {
        "data": f"{dataset.name} ({dataset.root})",
        "split": {"file": str(split_path), "index": index, "seed": splits.seed},
    }
    report: dict[str, Any] = {
        "split": index,
        "train_images": len(train_samples),
        "test_images": len(test_samples),
        "evaluation": evaluation,
    }
    return SplitRun(
        dataset, index, out_dir, list(train_samples), list(test_samples), provenance, report,
        evaluation,
    )  # fmt: skip


def _add_synthetic(split: SplitRun, per_ref: int, seed: int) -> None:
    synthetic = synthetic_samples(
        split.dataset, split.train_samples, split.test_samples, split.out_dir, per_ref, seed
    )
    split.provenance["synthetic"] = {
        "per_ref": per_ref,
        "seed": seed,
        "images": len(synthetic),
        "dir": str(split.out_dir / "synthetic"),
    }
    split.report["synthetic_train_images"] = len(synthetic)
    split.train_samples = [*split.train_samples, *synthetic]


def _evaluate(model, split: SplitRun, preprocess, crop_seed: int, *, progress: bool):
    from loda.train.evaluate import evaluate_samples

    return evaluate_samples(
        model,
        split.test_samples,
        preprocess,
        dataset_name=split.dataset.name,
        mos_range=split.dataset.mos_range,
        seed=crop_seed,
        progress=progress,
    )


def _save_final(model, split: SplitRun, preprocess, cfg, evaluated) -> None:
    """``model.safetensors``: the last epoch's weights with the fitted calibration."""
    from loda.checkpoint import save_checkpoint

    save_checkpoint(
        model,
        split.out_dir / "model.safetensors",
        preprocess=preprocess,
        calibration=evaluated.calibration,
        provenance={
            **split.provenance,
            "source": "loda-train",
            "train": cfg.to_dict(),
            **{k: evaluated.metrics[k] for k in METRICS},
            "test_images": len(split.test_samples),
            "evaluation": split.evaluation,
            "epochs": cfg.epochs,
        },
    )


def synthetic_samples(dataset, train_samples, test_samples, out_dir: Path, per_ref: int, seed):
    """The synthetic images of the training references (rank 0 makes them, the rest wait)."""
    import torch.distributed as dist

    from loda.data.synthetic import synthesize_training_set

    refs = {s.ref for s in train_samples}
    if None in refs:
        raise LodaError("--synthetic-per-ref needs the demo set (images with references)")
    leaked = refs & {s.ref for s in test_samples}
    if leaked:
        raise LodaError(f"the split puts references in train and test: {sorted(leaked)}")

    def make():
        return synthesize_training_set(
            dataset.root, refs, out_dir / "synthetic", per_ref, seed, log=log.info
        )

    if not dist.is_initialized():
        return make()
    if dist.get_rank() == 0:
        samples = make()
        dist.barrier()
        return samples
    dist.barrier()
    return make()  # reuses rank 0's files


def evaluate_checkpoint(
    checkpoint: Path,
    dataset,
    samples,
    *,
    layout: str,
    seed: int,
    crops: int,
    target: Path,
    provenance: dict[str, Any],
):
    """Evaluate ``checkpoint`` on ``samples`` and save it to ``target`` with the fitted score
    calibration and ``provenance`` (what it was evaluated on) added to its record."""
    from loda.checkpoint import load_checkpoint, save_checkpoint
    from loda.train.evaluate import evaluate_samples

    model, meta = load_checkpoint(checkpoint)
    result = evaluate_samples(
        model,
        samples,
        dataclasses.replace(meta.preprocess, layout=layout),
        dataset_name=dataset.name,
        mos_range=dataset.mos_range,
        seed=seed,
        num_crops=crops,
        progress=True,
    )
    save_checkpoint(
        model,
        target,
        preprocess=meta.preprocess,
        calibration=result.calibration,
        provenance={**meta.provenance, "evaluated_on": {**provenance, **result.metrics}},
    )
    return result


def run_splits(
    opts: dict[str, Any], kind: str, dataset, out_dir: Path, num_splits: int, *,
    layout: str, crop_seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate ``num_splits`` seeded splits; the per-split reports and the medians
    (also written to ``out_dir/results.json`` by the caller)."""
    splits, split_path = splits_for(
        dataset, opts["split_file"], out_dir, num_splits, opts["split_seed"]
    )
    if num_splits > len(splits):
        raise LodaError(f"--splits {num_splits}: {split_path} holds only k={len(splits)} splits")
    reports = []
    for i in range(num_splits):
        report = train_and_eval(
            opts, kind, dataset, splits, split_path, i, out_dir / f"split{i}",
            layout=layout, crop_seed=crop_seed,
        )  # fmt: skip
        reports.append(report)
    medians = {k: statistics.median(r["trained"][k] for r in reports) for k in METRICS}
    return {
        "data": opts["data_spec"],
        "splits": str(split_path),
        "evaluation": reports[0]["evaluation"],
        "per_split": reports,
        "median": medians,
    }
