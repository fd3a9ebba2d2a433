"""bench/gpu_check (the GPU check) and bench/gpu_bundle.py: the code paths, without a GPU.

The smoke run goes the way the GPU machine goes: the bundle carries loda's wheel, and
``bench/gpu_check.sh`` installs it offline into a temporary folder on PYTHONPATH and runs the
check with that INSTALLED package. The machine holds torch, timm, onnx, onnxruntime, numpy and
Pillow; the bundle ships click, tqdm, safetensors and onnxslim (here they come from the venv,
at the versions the bundle would download). A ``sitecustomize`` puts ``None`` in
``sys.modules`` for every package neither the machine nor the bundle has (``import`` then
raises ModuleNotFoundError and ``find_spec`` answers None, as for a missing package) and drops
the editable install's finder, so ``loda`` can only come from the installed wheel.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_photo

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
# Neither on the GPU machine (or not promised) nor in the bundle: the check must not need them.
ABSENT_THERE = (
    "scipy",
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


def _gpu_machine_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return dict(os.environ, PYTHONPATH=str(site), PY=sys.executable, **extra)


def _gpucheck(module: str):
    """A part of bench/gpucheck, imported as bench/gpu_check.py imports it."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(f"gpucheck.{module}")


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
        _fake_demo_set(tmp_path / "demo"), bundle, n=4, checkpoint=ckpt, max_mb=16, download=False
    )
    assert len(manifest["images"]) == 4 and manifest["checkpoint"]["config"]["name"] == "loda_micro"
    assert (bundle / "model.safetensors").is_file()
    (wheel,) = manifest["wheels"]
    assert wheel.startswith("loda-") and (bundle / "wheels" / wheel).is_file()

    report = tmp_path / "report.json"
    env = _gpu_machine_env(tmp_path, GPU_CHECK_WHEELS=str(bundle / "wheels"))
    out = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--smoke", "--smoke-workers",
         "--images", str(bundle), "--n-images", "3", "--batches", "2", "--out", str(report)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
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
    assert env["status"] == "ok" and not env["loda_from_this_tree"]
    install = env["loda_install"]  # bench/gpu_install.py's record: the wheel went in
    assert install["installed"][0] == wheel
    assert env["loda_imported_from"] == str(Path(install["target"]) / "loda")
    assert not any(env["optional_modules"][m] for m in ("scipy", "sklearn", "onnxscript"))

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
    images_mod = _gpucheck("images")
    monkeypatch.setattr(images_mod, "DEFAULT_BUNDLE", tmp_path / "no_bundle")
    monkeypatch.setattr(images_mod, "DEFAULT_DEMOSET", tmp_path / "no_demoset")
    args = _gpucheck("main").parse_args(["--smoke", "--device", "cpu", "--n-images", "3"])
    images, notes = images_mod.find_images(args, 100.0, tmp_path)
    assert images.source == "generated" and len(images.paths) == 3
    assert all(p.is_file() for p in images.paths) and images.mos == [None] * 3
    assert any("no bundle" in n for n in notes) and any("no demo set" in n for n in notes)
    from loda.preprocess import preprocess_image

    assert preprocess_image(images.paths[0]).shape == (15, 224, 224, 3)


def test_bundle_refuses_a_foreign_directory_and_a_missing_demo_set(tmp_path):
    gpu_bundle = _load("gpu_bundle")
    demo = _fake_demo_set(tmp_path / "demo", n=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(gpu_bundle.BundleError, match="not a GPU bundle"):
        gpu_bundle.make_bundle(demo, foreign, n=2, checkpoint=None, max_mb=16, download=False)
    with pytest.raises(gpu_bundle.BundleError, match="no demo set"):
        gpu_bundle.make_bundle(
            tmp_path / "none", tmp_path / "b", n=2, checkpoint=None, max_mb=16, download=False
        )
    made = gpu_bundle.make_bundle(
        demo, tmp_path / "b", n=2, checkpoint=None, max_mb=16, download=False
    )
    again = gpu_bundle.make_bundle(
        demo, tmp_path / "b", n=3, checkpoint=None, max_mb=16, download=False
    )
    assert len(made["images"]) == 2 and len(again["images"]) == 3  # its own bundle is replaced
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == sorted(
        Path(e["file"]).name for e in again["images"]
    )


@pytest.mark.slow
def test_shell_wrapper_keeps_a_partial_report_when_killed_and_fails_without_one(tmp_path):
    report = tmp_path / "r.json"
    # GPU_CHECK_INSTALL=0: the venv's own loda (this test is about the timeout and the report).
    env = dict(os.environ, PY=sys.executable, GPU_CHECK_TIMEOUT="8", GPU_CHECK_INSTALL="0")
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

    env_bad = dict(os.environ, PY="false", GPU_CHECK_INSTALL="0")
    bad = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path / "none.json")],
        env=env_bad, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no report written" in bad.stderr

    # No wheels to install (no bundle made): one line, no report, exit 1.
    env_none = dict(os.environ, PY=sys.executable, GPU_CHECK_WHEELS=str(tmp_path / "nowheels"))
    none = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path / "n.json")],
        env=env_none, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert none.returncode == 1 and not (tmp_path / "n.json").exists()
    assert "no wheels at" in none.stderr and "installing loda" in none.stderr


def test_install_plan_ships_only_the_dependencies_this_python_lacks(tmp_path):
    import zipfile

    gpu_install = _load("gpu_install")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, files in {
        "loda-0.1.0-py3-none-any.whl": ["loda/__init__.py"],
        "numpy-9.9-py3-none-any.whl": ["numpy/__init__.py", "numpy-9.9.dist-info/RECORD"],
        "absentdep-1.0-py3-none-any.whl": ["absentdep_mod.py", "absentdep-1.0.dist-info/RECORD"],
    }.items():
        with zipfile.ZipFile(wheels / name, "w") as zf:
            for f in files:
                zf.writestr(f, "")
    loda, install, present = gpu_install.plan(wheels)
    assert loda.name.startswith("loda-")
    assert [w.name for w in install] == ["absentdep-1.0-py3-none-any.whl"]
    assert present == ["numpy-9.9-py3-none-any.whl"]  # importable here: the machine's own stays
    (wheels / "loda-0.2.0-py3-none-any.whl").write_bytes((wheels / loda.name).read_bytes())
    with pytest.raises(SystemExit, match="2 loda wheels"):
        gpu_install.plan(wheels)
