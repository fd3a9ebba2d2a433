from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import torch
from PIL import Image

from loda.checkpoint import load_checkpoint, save_checkpoint
from loda.data.datasets import read_dataset
from loda.data.demo import make_demo_set
from loda.data.splits import Splits, make_splits
from loda.errors import LodaError
from loda.model import create_model
from loda.preprocess import PreprocessConfig, load_resized
from loda.train.evaluate import evaluate_samples, predict_samples
from loda.train.trainer import TrainConfig, TrainCrops, latest_epoch, plcc_loss, state_path, train


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """A miniature demo set: 3 references x 8 distortions x 5 levels, small images."""
    d = tmp_path_factory.mktemp("demo")
    csv = make_demo_set(d, seed=0, size=(96, 64), references=["astronaut", "coffee", "camera"])
    return read_dataset("csv", csv)


def test_plcc_loss_is_the_authors_formula():
    rng = np.random.default_rng(0)
    p, y = rng.normal(size=32), rng.normal(size=32) + 3
    ps, ys = (p - p.mean()) / (p.std() + 1e-8), (y - y.mean()) / (y.std() + 1e-8)
    rho = np.mean(ps * ys)
    expected = (np.mean((ps - ys) ** 2) / 4 + np.mean((rho * ps - ys) ** 2) / 4) / 2
    got = plcc_loss(torch.tensor(p), torch.tensor(y)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert plcc_loss(torch.tensor(2 * y + 1), torch.tensor(y)).item() == pytest.approx(0, abs=1e-6)


def test_training_crops_are_seeded_flipped_and_from_the_shared_preprocessing(small_set):
    data = TrainCrops(small_set.samples[:4], PreprocessConfig(), crops_per_image=3, seed=5)
    assert len(data) == 12
    a, mos = data[7]
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    assert mos == np.float32(small_set.samples[2].mos)
    b, _ = data[7]
    assert np.array_equal(a, b)  # the same (seed, epoch, index) gives the same crop
    data.epoch = 1
    assert not np.array_equal(a, data[7][0])  # a new epoch draws new crops


def _micro(seed=0):
    torch.manual_seed(seed)
    return create_model("loda_micro")


@pytest.mark.slow
def test_short_training_decreases_the_loss(tmp_path):
    # The demo set at full size for six colour references (240 images): 15 steps of 32 crops per
    # epoch, 3 epochs. (The full demo run halves its loss within its first ~45 steps.)
    refs = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
    csv = make_demo_set(tmp_path / "data", seed=0, references=refs)
    samples = read_dataset("csv", csv).samples
    model = _micro()
    cfg = TrainConfig(
        epochs=3, batch_size=32, lr=1e-3, crops_per_image=2, train_backbones="all", seed=1
    )
    result = train(model, samples, tmp_path / "run", cfg, progress=False)
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses
    meta = load_checkpoint(tmp_path / "run" / "epoch3.safetensors")[1]
    assert meta.provenance["epoch"] == 3 and meta.provenance["train"]["lr"] == 1e-3


class _Crash(Exception):
    pass


@pytest.mark.parametrize(
    "extra",
    [{}, {"amp": True, "channels_last": False}],
    ids=["fp32-nhwc", "bf16-nchw"],
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small_set, tmp_path, extra):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, crops_per_image=1, seed=3, **extra)
    samples = small_set.samples[:40]
    straight = train(_micro(), samples, tmp_path / "a", cfg, progress=False).model

    def crash_after_first_epoch(epoch, model):
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(
            _micro(),
            samples,
            tmp_path / "b",
            cfg,
            progress=False,
            on_epoch_end=crash_after_first_epoch,
        )
    assert not (tmp_path / "b" / "epoch2.safetensors").exists()
    # a fresh process would build a fresh model (another init) and resume from disk
    resumed = train(_micro(seed=99), samples, tmp_path / "b", cfg, progress=False, resume=True)
    assert resumed.epochs_run == 1
    a, b = straight.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_crash_while_writing_the_train_state_leaves_the_previous_epoch_resumable(
    small_set, tmp_path, monkeypatch
):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, crops_per_image=1, seed=3)
    samples = small_set.samples[:40]
    real_save = torch.save

    def killed_while_saving_epoch2(obj, f):
        real_save(obj, f)
        if "epoch2" in str(f):  # the process dies with half of the file written
            with open(f, "r+b") as fh:
                fh.truncate(Path(f).stat().st_size // 2)
            raise _Crash

    monkeypatch.setattr(torch, "save", killed_while_saving_epoch2)
    with pytest.raises(_Crash):
        train(_micro(), samples, tmp_path, cfg, progress=False)
    monkeypatch.undo()
    assert not state_path(tmp_path / "epoch2.safetensors").exists()
    assert latest_epoch(tmp_path) == 1
    resumed = train(_micro(seed=99), samples, tmp_path, cfg, progress=False, resume=True)
    assert resumed.epochs_run == 1


def test_resume_from_a_truncated_train_state_is_one_line(small_set, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, crops_per_image=1)
    run = tmp_path / "run"
    train(_micro(), small_set.samples[:16], run, cfg, progress=False)
    state = state_path(run / "epoch1.safetensors")
    with open(state, "r+b") as fh:
        fh.truncate(state.stat().st_size // 2)
    res = _cli(
        "train_main", "--data", small_set.root / "demo.csv", "--config", "loda_micro",
        "--random-init", "--out", run, "--epochs", "2", "--batch-size", "16",
        "--crops-per-image", "1", "--num-splits", "3", "--resume",
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("loda-train: error: cannot read") and str(state) in line


def test_resume_without_a_checkpoint_is_a_clear_error(small_set, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, crops_per_image=1)
    with pytest.raises(LodaError, match="no epoch checkpoint"):
        train(_micro(), small_set.samples[:8], tmp_path, cfg, progress=False, resume=True)
    with pytest.raises(LodaError, match="fewer than one batch"):
        train(_micro(), small_set.samples[:3], tmp_path, cfg, progress=False)
    with pytest.raises(LodaError, match="must divide"):
        TrainConfig(batch_size=10, micro_batch=3)


def test_gradient_accumulation_runs_and_learns(small_set, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, micro_batch=8, lr=1e-3, crops_per_image=1)
    result = train(_micro(), small_set.samples[:32], tmp_path, cfg, progress=False)
    assert np.isfinite(result.losses[0])


def test_evaluation_grid_is_deterministic_and_random_is_seeded(small_set):
    model = _micro().eval()
    samples = small_set.samples[:6]
    grid = PreprocessConfig(num_crops=5)
    a = predict_samples(model, samples, grid, batch_size=10)
    b = predict_samples(model, samples, grid, batch_size=5)
    # batching changes only the float summation order inside the kernels
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    rnd = PreprocessConfig(num_crops=5, layout="random")
    r1 = predict_samples(model, samples, rnd, seed=4)
    r2 = predict_samples(model, samples, rnd, seed=4)
    r3 = predict_samples(model, samples, rnd, seed=5)
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3)
    result = evaluate_samples(
        model, small_set.samples[:12], grid, dataset_name="demo", mos_range=(1, 5), num_crops=3
    )
    assert set(result.metrics) == {"srcc", "plcc", "krcc", "rmse", "n"}
    assert result.metrics["n"] == 12 and result.calibration.dataset == "demo"


def _cli(module_main, *args):
    code = (
        f"import sys; from loda.train.cli import {module_main}; sys.argv[0] = 'x'; {module_main}()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.slow
def test_train_and_eval_commands(small_set, tmp_path):
    csv = small_set.root / "demo.csv"
    out = tmp_path / "run"
    res = _cli(
        "train_main",
        "--data",
        csv,
        "--config",
        "loda_micro",
        "--random-init",
        "--out",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--crops-per-image",
        "1",
        "--train-backbones",
        "all",
        "--lr",
        "1e-3",
        "--num-splits",
        "3",
        "--baseline",
        "--synthetic-per-ref",
        "2",
        "--decode",
        "fast",
        "--cache-mb",
        "8",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "results.json").read_text())
    assert {"untrained", "trained", "checkpoint"} <= set(report)
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["splits"]) == 3
    # synthetic images: 2 per TRAINING reference of split 0, none of a test reference
    ref_of = {r.name: r.ref for r in small_set.samples}
    train_refs = {ref_of[n] for n in splits["splits"][0]["train"]}
    test_refs = {ref_of[n] for n in splits["splits"][0]["test"]}
    synthetic = sorted((out / "synthetic" / "images").glob("*.png"))
    assert {p.name.split("_")[0] for p in synthetic} == train_refs
    assert not train_refs & test_refs
    assert report["synthetic_train_images"] == len(synthetic) == 2 * len(train_refs)
    model_meta = load_checkpoint(out / "model.safetensors")[1]
    assert (
        model_meta.calibration is not None
        and model_meta.provenance["srcc"] == report["trained"]["srcc"]
    )
    # the training decode mode and cache are training settings; the model's preprocessing
    # (what scoring uses) stays exact
    assert model_meta.provenance["train"]["decode"] == "fast"
    assert model_meta.provenance["train"]["cache_mb"] == 8
    assert model_meta.preprocess.decode == "exact"

    ev = _cli(
        "eval_main",
        out / "epoch1.safetensors",
        "--data",
        csv,
        "--split-file",
        out / "splits.json",
        "--split-index",
        "0",
        "--crops",
        "3",
        "-o",
        tmp_path / "evaluated.safetensors",
        "--json",
        tmp_path / "eval.json",
    )
    assert ev.returncode == 0, ev.stderr
    assert "SRCC" in ev.stdout
    meta = load_checkpoint(tmp_path / "evaluated.safetensors")[1]
    assert meta.calibration.dataset == "loda-demo"  # the demo set's dataset.json name
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == report["test_images"]


def test_train_command_errors(tmp_path, small_set, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    csv = small_set.root / "demo.csv"
    res = _cli("train_main", "--data", csv, "--config", "loda_micro", "--out", tmp_path / "o")
    assert res.returncode == 1
    assert "no pretrained weights for test_vit.r160_in1k" in res.stderr
    assert "--random-init" not in res.stdout and len(res.stderr.strip().splitlines()) == 1
    res = _cli("train_main", "--data", "nonsense", "--out", tmp_path / "o")
    assert res.returncode == 2 and "KIND:ROOT" in res.stderr
    res = _cli("eval_main", tmp_path / "missing.safetensors", "--data", csv)
    assert res.returncode == 1 and "no checkpoint at" in res.stderr
    # synthetic images need the demo set itself (its references and rule), not any CSV
    other = tmp_path / "other"
    other.mkdir()
    rows = ["path,mos,ref"]
    for s in small_set.samples:
        (other / s.path.name).write_bytes(s.path.read_bytes())
        rows.append(f"{s.path.name},{s.mos},{s.ref}")
    (other / "labels.csv").write_text("\n".join(rows) + "\n")
    res = _cli(
        "train_main", "--data", other / "labels.csv", "--config", "loda_micro", "--random-init",
        "--out", tmp_path / "o2", "--synthetic-per-ref", "2", "--epochs", "1",
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "need the demo set" in line


def test_counts_and_seeds_out_of_range_are_usage_errors(tmp_path, small_set):
    csv = small_set.root / "demo.csv"
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(_micro(), ckpt)
    split_file = tmp_path / "splits.json"
    make_splits(small_set, k=2).save(split_file)
    trainer = ("train_main", "--data", csv, "--config", "loda_micro", "--out", tmp_path / "o")
    splits = ("eval_main", "--data", csv, "--out", tmp_path / "s", "--split-file", split_file)
    for args, option in [
        (("eval_main", ckpt, "--data", csv, "--crops", "0"), "--crops"),
        (("eval_main", ckpt, "--data", csv, "--seed", "-1", "--layout", "random"), "--seed"),
        ((*splits, "--splits", "0"), "--splits"),
        ((*splits, "--splits", "2", "--crop-seed", "-3"), "--crop-seed"),
        ((*trainer, "--epochs", "0"), "--epochs"),
        ((*trainer, "--batch-size", "-4"), "--batch-size"),
        ((*trainer, "--crops-per-image", "0"), "--crops-per-image"),
        ((*trainer, "--num-splits", "0"), "--num-splits"),
        ((*trainer, "--cache-mb", "-1"), "--cache-mb"),
        ((*trainer, "--decode", "turbo"), "--decode"),
    ]:
        res = _cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert f"Invalid value for '{option}'" in res.stderr, res.stderr


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(small_set, tmp_path):
    """The multi-GPU command, run with 2 CPU processes (gloo): same entry point, DDP path."""
    csv = small_set.root / "demo.csv"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "loda.train.cli",
        "--data",
        str(csv),
        "--config",
        "loda_micro",
        "--random-init",
        "--out",
        str(tmp_path / "ddp"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--crops-per-image",
        "1",
        "--num-splits",
        "3",
        "--device",
        "cpu",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp" / "epoch1.safetensors").is_file()
    report = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert report["trained"]["n"] == report["test_images"]


@pytest.mark.slow
def test_eval_splits_protocol_reports_medians(small_set, tmp_path):
    csv = small_set.root / "demo.csv"
    out = tmp_path / "splits"
    res = _cli(
        "eval_main", "--splits", "2", "--data", csv, "--out", out, "--config", "loda_micro",
        "--random-init", "--epochs", "1", "--batch-size", "16", "--crops-per-image", "1",
        "--train-backbones", "all", "--lr", "1e-3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["per_split"]) == 2
    srcc = sorted(r["trained"]["srcc"] for r in summary["per_split"])
    assert summary["median"]["srcc"] == pytest.approx((srcc[0] + srcc[1]) / 2)
    assert res.stdout.splitlines()[-1].startswith("median")
    test_refs = [
        {s.ref for s in small_set.samples if s.name in split["test"]}
        for split in json.loads((out / "splits.json").read_text())["splits"]
    ]
    assert all(refs for refs in test_refs)


@pytest.mark.slow
def test_eval_splits_uses_the_random_crop_layout_and_checks_k_up_front(small_set, tmp_path):
    csv = small_set.root / "demo.csv"
    out = tmp_path / "splits"
    common = (
        "--data", csv, "--config", "loda_micro", "--random-init", "--epochs", "1",
        "--batch-size", "16", "--crops-per-image", "1",
    )  # fmt: skip
    res = _cli(
        "eval_main", "--splits", "1", "--out", out, "--layout", "random", "--crop-seed", "5",
        *common,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["evaluation"] == {"layout": "random", "crops": 15, "crop_seed": 5}
    # the reported metrics are those of the trained checkpoint under that layout and seed
    model, meta = load_checkpoint(out / "split0" / "model.safetensors")
    assert meta.provenance["evaluation"] == summary["evaluation"]
    _, test = Splits.load(out / "splits.json").select(small_set, 0)

    def metrics(layout, seed):
        preprocess = PreprocessConfig(layout=layout)
        kw = {"dataset_name": "demo", "mos_range": (1, 5), "seed": seed}
        return evaluate_samples(model, test, preprocess, **kw).metrics

    assert summary["per_split"][0]["trained"] == pytest.approx(metrics("random", 5))
    assert summary["per_split"][0]["trained"]["srcc"] != metrics("grid", None)["srcc"]

    # more splits than the split file holds: one line before any training
    res = _cli(
        "eval_main", "--splits", "3", "--out", tmp_path / "more",
        "--split-file", out / "splits.json", *common,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert str(out / "splits.json") in line and "k=1" in line
    assert not (tmp_path / "more" / "split0").exists()


# --------------------------------------------------------------------------------------------
# camera-size photos: a SPAQ-like set of 12 MP JPEGs made here
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camera_spaq(tmp_path_factory):
    """SPAQ's layout (xlsx + TestImage/) with four 4000x3000 JPEGs (quality 90)."""
    root = tmp_path_factory.mktemp("spaq")
    (root / "TestImage").mkdir()
    wb = openpyxl.Workbook()
    wb.active.append(["Image name", "MOS"])
    for i, mos in enumerate([31.0, 48.5, 62.0, 80.25]):
        name = f"{i + 1:05d}.jpg"
        wb.active.append([name, mos])
        coarse = np.random.default_rng(i).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BICUBIC)
        photo.save(root / "TestImage" / name, quality=90)
    wb.save(root / "MOS and Image attribute scores.xlsx")
    return root


def test_training_on_camera_size_photos_with_the_fast_decode(camera_spaq, tmp_path):
    samples = read_dataset("spaq", camera_spaq).samples
    cfg = TrainConfig(epochs=1, batch_size=4, crops_per_image=1, lr=1e-3, decode="fast", cache_mb=2)
    result = train(_micro(), samples, tmp_path, cfg, progress=False)
    assert result.epochs_run == 1 and np.isfinite(result.losses[0])
    meta = load_checkpoint(result.checkpoint)[1]
    assert meta.provenance["train"]["decode"] == "fast"
    assert meta.provenance["train"]["cache_mb"] == 2
    assert meta.preprocess.decode == "exact"  # the model's preprocessing stays exact


def test_training_images_follow_the_decode_mode_and_the_cache_bound(camera_spaq):
    samples = read_dataset("spaq", camera_spaq).samples
    fast_cfg = PreprocessConfig(decode="fast")
    fast = TrainCrops(samples, fast_cfg, crops_per_image=1, seed=0, cache_mb=2)
    first = fast._image(samples[0])
    assert first.shape == (384, 512, 3)
    np.testing.assert_array_equal(first, load_resized(samples[0].path, fast_cfg)[0])
    assert not np.array_equal(first, load_resized(samples[0].path)[0])  # not the exact pixels
    for s in samples:
        fast._image(s)
    # one resized image is 512 * 384 * 3 = 589,824 bytes: 2 MB hold the last 3 of the 4
    assert len(fast.cache.items) == 3 and fast.cache.size <= 2 * 1024 * 1024
    assert str(samples[0].path) not in fast.cache.items
    uncached = TrainCrops(samples, PreprocessConfig(), crops_per_image=1, seed=0, cache_mb=0)
    for s in samples:
        uncached._image(s)
    assert not uncached.cache.items
    with pytest.raises(LodaError, match="--cache-mb"):
        TrainConfig(cache_mb=-1)
    with pytest.raises(LodaError, match="--decode must be one of exact, fast"):
        TrainConfig(decode="turbo")


def test_a_resized_folder_gives_the_same_training_crops(camera_spaq):
    """SPAQ's ?image_dir=: a copy resized by the shared preprocessing (PNG, 384 short side)
    gives the crops of the full-size photos, with no full-size decode."""
    full = read_dataset("spaq", camera_spaq)
    resized_dir = camera_spaq / "TestImage_384"
    resized_dir.mkdir(exist_ok=True)
    for s in full.samples:
        Image.fromarray(load_resized(s.path)[0]).save(resized_dir / f"{s.path.stem}.png")
    small = read_dataset("spaq", camera_spaq, image_dir="TestImage_384")
    assert all(s.path.parent == resized_dir for s in small.samples)
    assert small.names == full.names
    a = TrainCrops(full.samples, PreprocessConfig(), crops_per_image=3, seed=1)
    b = TrainCrops(small.samples, PreprocessConfig(), crops_per_image=3, seed=1)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        assert a[i][1] == b[i][1]
