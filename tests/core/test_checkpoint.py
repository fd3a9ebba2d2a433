from __future__ import annotations

import json
import struct

import pytest
import timm
import torch
from safetensors.torch import save_file

from loda.checkpoint import (
    authors_state,
    import_authors_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from loda.errors import CheckpointError, LodaError, StateDictMismatch
from loda.metadata import SCHEMA_VERSION, Calibration, CheckpointMeta
from loda.metrics import LogisticFit
from loda.model import create_model
from loda.preprocess import PreprocessConfig


def _x(batch=2, seed=0):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    path = tmp_path / "m.safetensors"
    calibration = Calibration(
        fit=LogisticFit(params=(4.9, 1.1, 0.12, 0.05), kind="logistic"),
        dataset="koniq10k",
        mos_range=(1.0, 5.0),
    )
    pre = PreprocessConfig(num_crops=9, layout="random")
    written = save_checkpoint(
        tiny_model,
        path,
        preprocess=pre,
        calibration=calibration,
        provenance={"data": "demo", "split": 3, "srcc": 0.91, "plcc": 0.92},
    )
    model, meta = load_checkpoint(path)
    original = tiny_model.state_dict()
    loaded = model.state_dict()
    assert original.keys() == loaded.keys()
    for key, value in original.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    assert meta == written
    assert meta.model == tiny_model.config
    assert meta.preprocess == pre
    assert meta.calibration == calibration
    assert meta.provenance["srcc"] == 0.91 and meta.provenance["package_version"]
    assert meta.schema_version == SCHEMA_VERSION
    tiny_model.eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), tiny_model(_x()))


def test_metadata_reads_without_torch(tiny_model, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model, path)
    code = (
        "import sys; from loda.metadata import read_safetensors_metadata as r; "
        f"m, _ = r({str(path)!r}); print(m.model.name, m.preprocess.num_crops); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["loda_tiny", "15"]


def _safetensors_with_metadata(path, metadata, tensors=None):
    save_file(tensors or {"x": torch.zeros(2)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no checkpoint at"),
        ("empty", "not a safetensors file"),
        ("garbage", "not a safetensors file"),
        ("json", "not a safetensors file"),
        ("plain-safetensors", "not a LoDa checkpoint"),
        ("schema", "schema version 99 is not supported"),
        ("bad-json", "not valid JSON"),
        ("bad-model", "unknown model config keys: bogus"),
        ("missing-section", "missing calibration"),
        ("unknown-backbone", "cannot be built: timm .* has no model 'vit_nonexistent'"),
        ("bad-calibration", "malformed LoDa metadata"),
    ],
)
def test_malformed_files_give_one_line_errors(case, message, tmp_path, tiny_model):
    path = tmp_path / "bad.safetensors"
    good = CheckpointMeta(model=tiny_model.config).to_dict()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(struct.pack("<Q", 2**40) + b"\x00" * 64)
    elif case == "json":
        path.write_text(json.dumps(good))
    elif case == "plain-safetensors":
        _safetensors_with_metadata(path, {"format": "pt"})
    elif case == "schema":
        _safetensors_with_metadata(path, {"loda": json.dumps({**good, "schema_version": 99})})
    elif case == "bad-json":
        _safetensors_with_metadata(path, {"loda": "{not json"})
    elif case == "bad-model":
        broken = {**good, "model": {**good["model"], "bogus": 1}}
        _safetensors_with_metadata(path, {"loda": json.dumps(broken)})
    elif case == "missing-section":
        broken = {k: v for k, v in good.items() if k != "calibration"}
        _safetensors_with_metadata(path, {"loda": json.dumps(broken)})
    elif case == "unknown-backbone":
        broken = {**good, "model": {**good["model"], "vit_name": "vit_nonexistent"}}
        _safetensors_with_metadata(path, {"loda": json.dumps(broken)})
    elif case == "bad-calibration":
        broken = {**good, "calibration": {"dataset": "x", "fit": [1, 2], "mos_range": [1, 5]}}
        _safetensors_with_metadata(path, {"loda": json.dumps(broken)})
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_tensors_that_do_not_fit_the_config_are_named(tiny_model, tmp_path):
    meta = CheckpointMeta(model=tiny_model.config)
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    del state["learner.head.weight"]
    state["learner.scale_factor"] = torch.zeros(3, 3)
    path = _safetensors_with_metadata(tmp_path / "t.safetensors", {"loda": meta.to_json()}, state)
    with pytest.raises(StateDictMismatch) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "1 missing: learner.head.weight" in msg
    assert "learner.scale_factor (3, 3) (expected (12, 192))" in msg
    assert isinstance(info.value, LodaError)


# -- the authors' checkpoint format -------------------------------------------------------------

RESNET50_BLOCKS = (3, 4, 6, 3)


def authors_learner_layout(channels=(256, 512, 1024, 2048), r=64, d=768, layers=12):
    """Key names and shapes exactly as listed in shared/docs/MODEL.md."""
    shapes = {"scale_factor": (layers, d), "head.weight": (d, 1)}
    for i, c in enumerate(channels):
        shapes[f"conv.{i}.0.weight"] = (r, c, 1, 1)
        shapes[f"conv.{i}.0.bias"] = (r,)
        shapes[f"conv.{i}.2.weight"] = (r, r, 3, 3)
    for n in range(layers):
        shapes |= {
            f"down_proj.{n}.fc1.weight": (r, d),
            f"down_proj.{n}.fc1.bias": (r,),
            f"down_proj.{n}.fc2.weight": (r, r),
            f"down_proj.{n}.fc2.bias": (r,),
            f"cross_attn.{n}.q.weight": (r, r),
            f"cross_attn.{n}.kv.weight": (2 * r, r),
            f"cross_attn.{n}.proj.weight": (r, r),
            f"cross_attn.{n}.proj.bias": (r,),
            f"up_proj.{n}.fc1.weight": (d, r),
            f"up_proj.{n}.fc1.bias": (d,),
            f"up_proj.{n}.fc2.weight": (d, d),
            f"up_proj.{n}.fc2.bias": (d,),
        }
    return shapes


def authors_bn_layout():
    """BatchNorm buffers of a timm ResNet50 (features_only), from the ResNet50 architecture."""
    bns = {"bn1": 64}
    for stage, blocks in enumerate(RESNET50_BLOCKS, start=1):
        width = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            bns |= {f"{p}.bn1": width, f"{p}.bn2": width, f"{p}.bn3": 4 * width}
        bns[f"layer{stage}.0.downsample.1"] = 4 * width
    shapes = {}
    for name, c in bns.items():
        shapes |= {
            f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": (),
        }
    return shapes


def _random_authors_checkpoint(seed=0):
    g = torch.Generator().manual_seed(seed)
    learner = {k: torch.randn(s, generator=g) * 0.05 for k, s in authors_learner_layout().items()}
    learner["scale_factor"] = torch.randn(12, 768, generator=g) * 0.5
    bn = {}
    for k, s in authors_bn_layout().items():
        if k.endswith("num_batches_tracked"):
            bn[k] = torch.tensor(1234, dtype=torch.long)
        elif k.endswith("running_var"):
            bn[k] = torch.rand(s, generator=g) + 0.5
        else:
            bn[k] = torch.randn(s, generator=g) * 0.1
    return {"learner": learner, "bn_buffer": bn}


@pytest.fixture(scope="module")
def b16_backbone_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("b16")
    torch.manual_seed(11)
    save_file(timm.create_model("vit_base_patch16_224").state_dict(), str(d / "vit.safetensors"))
    torch.save(timm.create_model("resnet50").state_dict(), d / "resnet50.pth")
    return d


def test_authors_layout_counts():
    assert len(authors_learner_layout()) == 158
    assert len(authors_bn_layout()) == 159


@pytest.mark.slow
def test_import_authors_checkpoint_equals_direct_assignment(b16_backbone_files, tmp_path):
    d = b16_backbone_files
    ckpt = _random_authors_checkpoint()
    path = tmp_path / "authors.pt"
    torch.save(ckpt, path)
    imported = import_authors_checkpoint(
        path, vit_weights=d / "vit.safetensors", cnn_weights=d / "resnet50.pth"
    )

    direct = create_model(
        "loda_b16", vit_weights=d / "vit.safetensors", cnn_weights=d / "resnet50.pth"
    )
    with torch.no_grad():
        for k, v in ckpt["learner"].items():
            direct.learner.get_parameter(k).copy_(v)
        for k, v in ckpt["bn_buffer"].items():
            direct.feature_model.get_buffer(k).copy_(v)
    direct.eval()
    x = _x(2, seed=3)
    with torch.no_grad():
        assert torch.equal(imported(x), direct(x))
    # and back: what we would save in the authors' format is what we read
    again = authors_state(imported)
    assert again["learner"].keys() == ckpt["learner"].keys()
    assert all(torch.equal(again["bn_buffer"][k], v) for k, v in ckpt["bn_buffer"].items())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop-learner-key", r"learner: 1 missing: cross_attn\.7\.kv\.weight"),
        ("misshape", r"mis-shaped: up_proj\.0\.fc2\.weight \(768, 64\) \(expected \(768, 768\)\)"),
        ("extra-bn", r"bn_buffer: 1 unexpected: layer9\.0\.bn1\.running_mean"),
        ("no-learner", r"not an authors' LoDa checkpoint: no learner dict"),
    ],
)
def test_authors_checkpoint_problems_are_named(damage, message, b16_backbone_files, tmp_path):
    d = b16_backbone_files
    ckpt = _random_authors_checkpoint()
    if damage == "drop-learner-key":
        del ckpt["learner"]["cross_attn.7.kv.weight"]
    elif damage == "misshape":
        ckpt["learner"]["up_proj.0.fc2.weight"] = torch.zeros(768, 64)
    elif damage == "extra-bn":
        ckpt["bn_buffer"]["layer9.0.bn1.running_mean"] = torch.zeros(3)
    elif damage == "no-learner":
        del ckpt["learner"]
    path = tmp_path / "a.pt"
    torch.save(ckpt, path)
    with pytest.raises(LodaError, match=message):
        import_authors_checkpoint(
            path, vit_weights=d / "vit.safetensors", cnn_weights=d / "resnet50.pth"
        )


def test_authors_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match="weights-only torch checkpoint"):
        import_authors_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        import_authors_checkpoint(path)
