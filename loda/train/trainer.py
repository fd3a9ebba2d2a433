"""Training LoDa with the paper's recipe (supplementary section 7.2, shared/docs/MODEL.md).

Defaults are the paper's: AdamW (lr 3e-4, weight decay 0.01), batch 128, cosine annealing per
iteration to 0 over all iterations, 10 epochs, random 224x224 crops of the 384-short-side image
with random horizontal and vertical flips, every crop inheriting its image's MOS, the PLCC loss,
frozen backbones with the CNN's BatchNorm statistics drifting (the model trains in train mode),
the last epoch evaluated. Crops per training image follow the authors' configurations.

Crops come from :mod:`loda.preprocess` (decode, resize, crop positions) and are normalised by
its ``normalize``: the same pixels as evaluation and the runtime. Resized training images are
kept in a bounded in-memory cache (``cache_mb``); camera-size photos (SPAQ) can be decoded with
the fast path (``decode="fast"``, reduced-scale JPEG decode) or read from an already-resized
folder (``spaq:ROOT?image_dir=...``), since a full-size decode per crop would dominate an epoch.
The checkpoint records the model's preprocessing (exact decode); the training decode mode is
recorded with the training settings. Crop positions and flips are
drawn from ``numpy.random.default_rng([seed, epoch, index])``, so they do not depend on the
number of data-loader workers, and a resumed run sees the same crops as an uninterrupted one.

One command covers one CPU, one GPU or N GPUs (``torchrun --nproc_per_node N -m loda.train.cli``:
DistributedDataParallel, the global batch split across ranks).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from loda._state import torch_load_weights_only
from loda.atomic import atomic_path
from loda.checkpoint import load_checkpoint, save_checkpoint
from loda.data.datasets import Sample
from loda.errors import LodaError
from loda.model import LoDa
from loda.preprocess import (
    DECODE_MODES,
    PreprocessConfig,
    load_resized,
    normalize,
    random_positions,
)

__all__ = [
    "CROPS_PER_IMAGE",
    "TrainConfig",
    "TrainResult",
    "plcc_loss",
    "train",
]

# Crops per training image: the paper (FLIVE 1, KonIQ-10k 3, LIVEC 5) and the authors' job
# configurations for the others; the generic CSV / demo set is our choice.
CROPS_PER_IMAGE = {
    "flive": 1,
    "koniq10k": 3,
    "livec": 5,
    "kadid10k": 3,
    "live": 5,
    "spaq": 3,
    "tid2013": 10,
    "csv": 3,
}

BACKBONE_TRAINING = ("none", "cnn", "all")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    micro_batch: int | None = None  # gradient accumulation: batch_size = k * micro_batch
    lr: float = 3e-4
    backbone_lr: float | None = None  # lr of backbone parameters when they train (default lr)
    weight_decay: float = 0.01
    crops_per_image: int = 3
    seed: int = 0
    train_backbones: str = "none"  # "none" (paper), "cnn", "all"
    workers: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA, off on CPU
    cache_mb: int = 1024  # in-memory cache of resized training images (per process)
    channels_last: bool = True  # NHWC memory layout for the convolutions (same maths, faster)
    decode: str = "exact"  # "fast": reduced-scale JPEG decode of the training images

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.crops_per_image <= 0:
            raise LodaError("epochs, batch size and crops per image must be positive")
        if self.micro_batch is not None and (
            self.micro_batch <= 0 or self.batch_size % self.micro_batch
        ):
            raise LodaError(
                f"--micro-batch {self.micro_batch} must divide --batch-size {self.batch_size}"
            )
        if (
            isinstance(self.cache_mb, bool)
            or not isinstance(self.cache_mb, int)
            or self.cache_mb < 0
        ):
            raise LodaError(f"--cache-mb must be a whole number >= 0, got {self.cache_mb!r}")
        if self.decode not in DECODE_MODES:
            raise LodaError(
                f"--decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}"
            )
        if self.train_backbones not in BACKBONE_TRAINING:
            raise LodaError(
                f"--train-backbones must be one of {', '.join(BACKBONE_TRAINING)}, "
                f"got {self.train_backbones!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' PLCC loss: standardise both, then average MSE(p, y)/4 and MSE(rho p, y)/4."""
    pred = pred.float().flatten()
    target = target.detach().float().flatten()
    s_hat, m_hat = torch.std_mean(pred, unbiased=False)
    pred = (pred - m_hat) / (s_hat + 1e-8)
    s, m = torch.std_mean(target, unbiased=False)
    target = (target - m) / (s + 1e-8)
    loss0 = F.mse_loss(pred, target) / 4
    rho = torch.mean(pred * target)
    loss1 = F.mse_loss(rho * pred, target) / 4
    return (loss0 + loss1) / 2


class _ImageCache:
    """Resized images kept in memory, bounded in bytes (least recently used goes first)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.size = 0
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str, load: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = load()
        if value.nbytes <= self.limit:
            self.items[key] = value
            self.size += value.nbytes
            while self.size > self.limit:
                _, old = self.items.popitem(last=False)
                self.size -= old.nbytes
        return value


class TrainCrops(Dataset):
    """``crops_per_image`` random, randomly flipped crops of every training image per epoch."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: PreprocessConfig,
        crops_per_image: int,
        seed: int,
        cache_mb: int = 1024,
    ) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.epoch = 0
        self.cache = _ImageCache(cache_mb * 1024 * 1024)

    def __len__(self) -> int:
        return len(self.samples) * self.crops_per_image

    def _image(self, sample: Sample) -> np.ndarray:
        return self.cache.get(
            str(sample.path), lambda: load_resized(sample.path, self.preprocess)[0]
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.float32]:
        sample = self.samples[index // self.crops_per_image]
        img = self._image(sample)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        size = self.preprocess.crop_size
        ((y, x),) = random_positions(img.shape[0], img.shape[1], size, 1, rng)
        crop = img[y : y + size, x : x + size]
        hflip, vflip = rng.random(2) < 0.5
        if hflip:
            crop = crop[:, ::-1]
        if vflip:
            crop = crop[::-1]
        return np.ascontiguousarray(crop), np.float32(sample.mos)


@dataclass
class TrainResult:
    model: LoDa
    out_dir: Path
    checkpoint: Path
    epochs_run: int
    losses: list[float]  # mean loss per epoch run in this call
    seconds: float
    crops_per_second: float


def _device(name: str) -> torch.device:
    if name == "auto":
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _set_trainable(model: LoDa, which: str) -> None:
    model.freeze_backbones()
    if which == "cnn":
        for p in model.feature_model.parameters():
            p.requires_grad = True
    elif which == "all":
        model.unfreeze()


def _param_groups(model: LoDa, cfg: TrainConfig) -> list[dict[str, Any]]:
    learner = [
        p for n, p in model.named_parameters() if p.requires_grad and n.startswith("learner.")
    ]
    backbone = [
        p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("learner.")
    ]
    groups = [{"params": learner, "lr": cfg.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.backbone_lr or cfg.lr})
    return groups


def _collate(preprocess: PreprocessConfig):
    def collate(batch):
        crops = np.stack([b[0] for b in batch])
        mos = torch.tensor(np.array([b[1] for b in batch], dtype=np.float32))
        return torch.from_numpy(normalize(crops, preprocess.mean, preprocess.std)), mos

    return collate


def state_path(checkpoint: Path) -> Path:
    """The optimizer/scheduler/RNG state saved beside a training checkpoint."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".train-state.pt")


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


@dataclass
class _Run:
    """What one training run fixed before its first step (device, batch split, precision)."""

    device: torch.device
    world: int
    rank: int
    rank_batch: int
    micro: int
    amp: bool
    amp_dtype: torch.dtype


def _plan(cfg: TrainConfig) -> _Run:
    device = _device(cfg.device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cfg.batch_size % world:
        raise LodaError(f"--batch-size {cfg.batch_size} must be divisible by {world} processes")
    rank_batch = cfg.batch_size // world
    micro = min(cfg.micro_batch or rank_batch, rank_batch)
    if rank_batch % micro:
        raise LodaError(f"--micro-batch {micro} must divide the per-process batch {rank_batch}")
    amp = (device.type == "cuda") if cfg.amp is None else cfg.amp
    amp_dtype = (
        torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    )
    return _Run(device, world, rank, rank_batch, micro, amp, amp_dtype)


def _loader(
    dataset: TrainCrops, run: _Run, cfg: TrainConfig, preprocess: PreprocessConfig, epoch: int
) -> DataLoader:
    """The epoch's batches: a seeded shuffle per epoch (per process under DDP)."""
    dataset.epoch = epoch
    if run.world > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=run.world, rank=run.rank, shuffle=True, seed=cfg.seed,
            drop_last=True,
        )  # fmt: skip
        sampler.set_epoch(epoch)
    else:
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler = RandomSampler(dataset, generator=g)
    return DataLoader(
        dataset,
        batch_size=run.rank_batch,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=_collate(preprocess),
        drop_last=True,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
    )


def _step(net, x, y, run: _Run, cfg: TrainConfig, optimizer, scheduler, scaler) -> float:
    """One optimizer step over a batch, in micro-batches (gradients accumulated)."""
    optimizer.zero_grad(set_to_none=True)
    parts = range(0, len(x), run.micro)
    step_loss = 0.0
    for start in parts:
        xb = x[start : start + run.micro].to(run.device, non_blocking=True)
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[start : start + run.micro].to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp):
            pred = net(xb)
        loss = plcc_loss(pred, yb) / len(parts)
        scaler.scale(loss).backward()
        step_loss += float(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return step_loss


@dataclass
class _Optimization:
    """The optimizer, its cosine schedule and the fp16 gradient scaler of one run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def _save_epoch(
    model: LoDa,
    checkpoint: Path,
    epoch: int,
    record: dict[str, Any],
    preprocess: PreprocessConfig,
    cfg: TrainConfig,
    opt: _Optimization,
) -> None:
    """``epochN.safetensors`` and its training state (optimizer, scheduler, scaler, RNG)."""
    save_checkpoint(model, checkpoint, preprocess=preprocess, provenance=record)
    with atomic_path(state_path(checkpoint)) as tmp:  # as save_checkpoint
        torch.save(
            {
                "epoch": epoch,
                "optimizer": opt.optimizer.state_dict(),
                "scheduler": opt.scheduler.state_dict(),
                "scaler": opt.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "train_config": cfg.to_dict(),
            },
            tmp,
        )


def _training_crops(
    samples: Sequence[Sample], cfg: TrainConfig, preprocess: PreprocessConfig
) -> TrainCrops:
    """The seeded crop dataset (the training decode mode is a training setting: the checkpoint
    keeps ``preprocess``)."""
    torch.manual_seed(cfg.seed)
    train_preprocess = dataclasses.replace(preprocess, decode=cfg.decode)
    dataset = TrainCrops(samples, train_preprocess, cfg.crops_per_image, cfg.seed, cfg.cache_mb)
    if len(dataset) < cfg.batch_size:
        raise LodaError(
            f"{len(samples)} training images x {cfg.crops_per_image} crops = {len(dataset)} "
            f"crops, fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )
    return dataset


def _optimization(model: LoDa, cfg: TrainConfig, run: _Run, total_steps: int) -> _Optimization:
    """Place the model, choose what trains, and build AdamW with its cosine schedule."""
    model.to(run.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    _set_trainable(model, cfg.train_backbones)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and run.amp_dtype == torch.float16)
    return _Optimization(optimizer, scheduler, scaler)


def _distributed(model: LoDa, run: _Run) -> torch.nn.Module:
    if run.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None
    )


def _run_epoch(
    net: torch.nn.Module,
    loader: DataLoader,
    run: _Run,
    cfg: TrainConfig,
    opt: _Optimization,
    *,
    desc: str,
    steps: int,
    progress: bool,
) -> tuple[list[float], int]:
    """One epoch's steps with a progress bar; returns the step losses and the crops seen."""
    net.train()
    losses: list[float] = []
    crops = 0
    bar = tqdm(
        loader,
        total=steps,
        desc=desc,
        disable=not (progress and _is_main()),
        unit="batch",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        if step >= steps:
            break
        step_loss = _step(net, x, y, run, cfg, opt.optimizer, opt.scheduler, opt.scaler)
        losses.append(step_loss)
        crops += len(x) * run.world
        rate = (step + 1) * cfg.batch_size / (time.perf_counter() - t0)
        bar.set_postfix(
            loss=f"{step_loss:.4f}",
            img_s=f"{rate / cfg.crops_per_image:.1f}",
            crops_s=f"{rate:.1f}",
        )
    bar.close()
    return losses, crops


def train(
    model: LoDa,
    samples: Sequence[Sample],
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    *,
    preprocess: PreprocessConfig | None = None,
    resume: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, LoDa], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``samples``; write ``epoch{N}.safetensors`` (+ train state) every epoch.

    With ``resume=True`` the run continues from the newest epoch checkpoint in ``out_dir``
    (weights, optimizer, scheduler and RNG state), giving the same weights as a run that was
    never interrupted.
    """
    preprocess = preprocess or PreprocessConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _plan(cfg)
    dataset = _training_crops(samples, cfg, preprocess)
    steps_per_epoch = len(dataset) // cfg.batch_size  # drop_last, as the authors
    opt = _optimization(model, cfg, run, steps_per_epoch * cfg.epochs)
    start_epoch = _resume(model, opt.optimizer, opt.scheduler, opt.scaler, out_dir) if resume else 0
    net = _distributed(model, run)

    losses: list[float] = []
    crops_seen = 0
    started = time.perf_counter()
    checkpoint = out_dir / f"epoch{start_epoch}.safetensors"
    for epoch in range(start_epoch, cfg.epochs):
        loader = _loader(dataset, run, cfg, preprocess, epoch)
        epoch_losses, crops = _run_epoch(
            net, loader, run, cfg, opt,
            desc=f"epoch {epoch + 1}/{cfg.epochs}", steps=steps_per_epoch, progress=progress,
        )  # fmt: skip
        crops_seen += crops
        losses.append(float(np.mean(epoch_losses)))
        checkpoint = out_dir / f"epoch{epoch + 1}.safetensors"
        if _is_main():
            record = {
                "source": "loda-train",
                "epoch": epoch + 1,
                "train": cfg.to_dict(),
                "train_images": len(samples),
                "loss": losses[-1],
                **(provenance or {}),
            }
            _save_epoch(model, checkpoint, epoch + 1, record, preprocess, cfg, opt)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        if run.world > 1:
            dist.barrier()
    seconds = time.perf_counter() - started
    return TrainResult(
        model=model,
        out_dir=out_dir,
        checkpoint=checkpoint,
        epochs_run=cfg.epochs - start_epoch,
        losses=losses,
        seconds=seconds,
        crops_per_second=crops_seen / seconds if seconds > 0 else math.nan,
    )


def latest_epoch(out_dir: Path) -> int:
    epochs = []
    for p in out_dir.glob("epoch*.safetensors"):
        stem = p.name.removeprefix("epoch").removesuffix(".safetensors")
        if stem.isdigit() and state_path(p).is_file():
            epochs.append(int(stem))
    return max(epochs, default=0)


_STATE_KEYS = ("epoch", "optimizer", "scheduler", "scaler", "torch_rng")


def _resume(model, optimizer, scheduler, scaler, out_dir: Path) -> int:
    epoch = latest_epoch(out_dir)
    if epoch == 0:
        raise LodaError(f"--resume: no epoch checkpoint with training state in {out_dir}")
    checkpoint = out_dir / f"epoch{epoch}.safetensors"
    saved, meta = load_checkpoint(checkpoint)
    if meta.model != model.config:
        raise LodaError(
            f"--resume: {checkpoint} holds model {meta.model.name}, not {model.config.name}"
        )
    model.load_state_dict(saved.state_dict())
    state_file = state_path(checkpoint)
    state = torch_load_weights_only(state_file, LodaError, "training state")
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise LodaError(f"--resume: {state_file} is not a training state (no {', '.join(missing)})")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])
