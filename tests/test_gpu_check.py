"""bench/gpu_check.py and bench/gpu_bundle.py: the GPU check's code paths, without a GPU.

The GPU machine holds only torch, timm, onnx, onnxruntime, numpy and Pillow, and this project is
not installed there. The smoke run below reproduces that: a ``sitecustomize`` puts ``None`` in
``sys.modules`` for every package the machine lacks (``import`` then raises ModuleNotFoundError
and ``importlib.util.find_spec`` answers None, exactly as for a missing package) and removes the
editable install's finder, so ``loda`` and ``loda.export`` must come from the source tree.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photo

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# Not on the GPU machine (or not promised): must never be needed by the check.
ABSENT_THERE = (
    "scipy",
    "click",
    "tqdm",
    "safetensors",
    "sklearn",
    "skimage",
    "openpyxl",
    "onnxscript",
    "onnxconverter_common",
    "modelopt",
    "tensorrt",
    "polygraphy",
)
SITECUSTOMIZE = f"""
import sys
for _name in {ABSENT_THERE!r}:
    sys.modules[_name] = None  # import -> ModuleNotFoundError, find_spec -> None
# Not pip-installed there: drop the editable install's finder.
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
"""
SECTIONS = [
    "env",
    "images",
    "parity",
    "throughput",
    "decode",
    "cuda_graphs",
    "torch_compile",
    "tensorrt",
    "recommendation",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _gpu_machine_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    return env


def _fake_demo_set(root: Path, n: int = 5) -> Path:
    """A demo-set-shaped folder (demo.csv with path,mos,ref and PNG/JPEG images)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        suffix = ".png" if i % 2 else ".jpg"
        name = f"images/ref{i % 2}_img{i}{suffix}"
        kwargs = {} if suffix == ".png" else {"quality": 90}
        write_photo(root / name, width=400 + 16 * i, height=300, seed=i, **kwargs)
        rows.append({"path": name, "mos": f"{1 + 0.7 * i:.4f}", "ref": f"ref{i % 2}"})
    with open(root / "demo.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "mos", "ref"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.slow
def test_smoke_runs_every_section_with_only_the_gpu_machines_packages(tmp_path):
    from loda.checkpoint import save_checkpoint
    from loda.model import create_model

    ckpt = tmp_path / "micro.safetensors"
    save_checkpoint(create_model("loda_micro").eval(), ckpt)
    bundle = tmp_path / "bundle"
    manifest = _load("gpu_bundle").make_bundle(
        _fake_demo_set(tmp_path / "demo"), bundle, n=4, checkpoint=ckpt, max_mb=16
    )
    assert len(manifest["images"]) == 4 and manifest["checkpoint"]["config"]["name"] == "loda_micro"
    assert (bundle / "model_state.pt").is_file()

    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--smoke",
         "--smoke-workers", "--images", str(bundle), "--n-images", "3", "--batches", "2",
         "--out", str(report)],
        cwd=tmp_path, env=_gpu_machine_env(tmp_path), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"report: {report}" in out.stdout
    data = json.loads(report.read_text(encoding="utf-8"))
    sections = data["sections"]
    assert data["format"] == "loda-gpu-check/1" and data["complete"] and data["smoke"]
    assert data["errors"] == [], json.dumps(sections, indent=1)[:4000]
    assert list(sections) == SECTIONS
    assert all(isinstance(s.get("seconds"), (int, float)) for s in sections.values())

    env = sections["env"]
    assert env["status"] == "ok" and env["loda_from_this_tree"]
    assert not any(env["optional_modules"][m] for m in ("scipy", "click", "tqdm", "safetensors"))

    images = sections["images"]
    assert images["status"] == "ok" and images["source"] == "bundle"
    assert images["n_images"] == 3 and images["with_mos"] == 3 and not images["generated"]

    parity = sections["parity"]
    assert parity["status"] == "ok"
    assert len(parity["models"]) == 2  # random-init loda_micro and the bundled checkpoint
    for model in parity["models"].values():
        variants = model["variants"]
        assert variants["fp32_tf32"]["status"] == "skipped: no CUDA"
        fp16 = variants["fp16_autocast"]
        assert fp16["status"] == "ok", fp16
        assert fp16["max_abs_d_image"] < 0.05 and fp16["spearman_vs_fp32"] is not None
        assert "dsrcc" in fp16 and isinstance(fp16["acceptable"], bool)

    throughput = sections["throughput"]["variants"]
    assert throughput["fp32"]["batches"]["2"]["items_per_s"] > 0
    assert throughput["fp16_autocast_e2e"]["batches"]["2"]["items_per_s"] > 0
    assert throughput["fp32_tf32"]["status"] == "skipped: no CUDA"

    decode = sections["decode"]
    assert decode["one_core"]["images_per_s"] > 0
    assert decode["process_pool"]["images_per_s"] > 0
    assert decode["thread_pool"]["images_per_s"] > 0

    for name in ("cuda_graphs", "torch_compile", "tensorrt"):
        assert sections[name]["status"].startswith("skipped: no CUDA"), sections[name]
    # The torch.compile child process ran (dynamo, eager backend, fp16 autocast) and reported.
    plumbing = sections["torch_compile"]["plumbing_check"]
    assert plumbing["status"] == "ok", plumbing
    assert plumbing["worker"]["returncode"] == 0
    assert plumbing["batches"]["2"]["max_abs_d_vs_eager"] < 1e-3

    recommendation = sections["recommendation"]
    assert recommendation["status"] == "ok"
    assert recommendation["torch_backend_defaults"]["precision"] in ("fp32", "fp16", "bf16")


def test_no_images_anywhere_falls_back_to_generated_images_and_says_so(tmp_path, monkeypatch):
    gpu_check = _load("gpu_check")
    monkeypatch.setattr(gpu_check, "DEFAULT_BUNDLE", tmp_path / "no_bundle")
    monkeypatch.setattr(gpu_check, "DEFAULT_DEMOSET", tmp_path / "no_demoset")
    args = gpu_check.parse_args(["--smoke", "--device", "cpu", "--n-images", "3"])
    report = gpu_check.Report(tmp_path / "r.json", 100.0, args)
    images, notes = gpu_check.find_images(args, report, tmp_path)
    assert images.source == "generated" and len(images.paths) == 3
    assert all(p.is_file() for p in images.paths) and images.mos == [None] * 3
    assert any("no bundle" in n for n in notes) and any("no demo set" in n for n in notes)
    from loda.preprocess import preprocess_image

    assert preprocess_image(images.paths[0]).shape == (15, 224, 224, 3)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    gpu_check = _load("gpu_check")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 6, 30).astype(float)  # many ties
        b = a + rng.normal(0, 1.5, 30)
        assert gpu_check.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert gpu_check.spearman([1, 1, 1], [1, 2, 3]) is None  # constant: undefined
    assert gpu_check.spearman([1, 2], [1, 2]) is None  # too few


def test_bundle_refuses_a_foreign_directory_and_a_missing_demo_set(tmp_path):
    gpu_bundle = _load("gpu_bundle")
    demo = _fake_demo_set(tmp_path / "demo", n=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(gpu_bundle.BundleError, match="not a GPU bundle"):
        gpu_bundle.make_bundle(demo, foreign, n=2, checkpoint=None, max_mb=16)
    with pytest.raises(gpu_bundle.BundleError, match="no demo set"):
        gpu_bundle.make_bundle(tmp_path / "none", tmp_path / "b", n=2, checkpoint=None, max_mb=16)
    made = gpu_bundle.make_bundle(demo, tmp_path / "b", n=2, checkpoint=None, max_mb=16)
    again = gpu_bundle.make_bundle(demo, tmp_path / "b", n=3, checkpoint=None, max_mb=16)
    assert len(made["images"]) == 2 and len(again["images"]) == 3  # its own bundle is replaced
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == sorted(
        Path(e["file"]).name for e in again["images"]
    )


@pytest.mark.slow
def test_shell_wrapper_keeps_a_partial_report_when_killed_and_fails_without_one(tmp_path):
    report = tmp_path / "r.json"
    env = dict(os.environ, PY=sys.executable, GPU_CHECK_TIMEOUT="8")
    out = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--out", str(report), "--device", "cpu", "--smoke",
         "--images", str(tmp_path / "missing")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["format"] == "loda-gpu-check/1"
    if data.get("exit_status") is not None:  # killed by the 8 s timeout (a slow machine)
        assert not data["complete"] and data["killed_by_timeout"]
    else:  # finished: the missing --images folder is an error in its section, not a crash
        assert data["sections"]["images"]["status"] == "error"

    env_bad = dict(os.environ, PY="false")
    bad = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path / "none.json")],
        env=env_bad, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no report written" in bad.stderr
