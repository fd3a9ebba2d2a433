from __future__ import annotations

import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from loda.backbones import find_in_hf_cache, read_weights
from loda.errors import BackboneWeightsError, StateDictMismatch
from loda.model import create_model


@pytest.fixture(scope="module")
def tiny_backbone_files(tmp_path_factory):
    """Full timm ViT-Tiny and ResNet18 state dicts (with their classifier heads), as a user's
    downloaded files would be: one safetensors, one torch file."""
    d = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    cnn = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(vit, str(d / "vit.safetensors"))
    torch.save(cnn, d / "cnn.pth")
    return d, vit, cnn


def test_backbones_load_from_files(tiny_backbone_files):
    d, vit, cnn = tiny_backbone_files
    model = create_model("loda_tiny", vit_weights=d / "vit.safetensors", cnn_weights=d / "cnn.pth")
    state = model.state_dict()
    assert torch.equal(state["blocks.3.attn.qkv.weight"], vit["blocks.3.attn.qkv.weight"])
    assert torch.equal(state["pos_embed"], vit["pos_embed"])
    assert torch.equal(state["feature_model.layer2.0.conv1.weight"], cnn["layer2.0.conv1.weight"])
    assert torch.equal(state["feature_model.bn1.running_var"], cnn["bn1.running_var"])
    # Every ViT key LoDa has came from the file; the file's classifier head is not used.
    assert set(model.vit_state_keys()) == set(vit) - {"head.weight", "head.bias"}


def _corrupt(tmp_path, state, name):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def test_missing_misshaped_and_unexpected_keys_are_named(tiny_backbone_files, tmp_path):
    _, vit, _ = tiny_backbone_files
    missing = {k: v for k, v in vit.items() if k != "blocks.0.attn.qkv.weight"}
    with pytest.raises(StateDictMismatch, match=r"1 missing: blocks\.0\.attn\.qkv\.weight"):
        create_model("loda_tiny", vit_weights=_corrupt(tmp_path, missing, "m.safetensors"))
    shaped = {**vit, "norm.weight": torch.zeros(7)}
    with pytest.raises(
        StateDictMismatch, match=r"mis-shaped: norm\.weight \(7,\) \(expected \(192,\)\)"
    ):
        create_model("loda_tiny", vit_weights=_corrupt(tmp_path, shaped, "s.safetensors"))
    extra = {**vit, "blocks.99.mlp.fc1.weight": torch.zeros(1)}
    with pytest.raises(StateDictMismatch, match=r"unexpected: blocks\.99\.mlp\.fc1\.weight"):
        create_model("loda_tiny", vit_weights=_corrupt(tmp_path, extra, "u.safetensors"))
    # A ResNet50 file handed in as the ResNet18 backbone: reported, never half-loaded.
    r50 = timm.create_model("resnet50", pretrained=False).state_dict()
    with pytest.raises(StateDictMismatch, match="CNN weights"):
        create_model("loda_tiny", cnn_weights=_corrupt(tmp_path, r50, "r50.safetensors"))


def test_pretrained_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(BackboneWeightsError) as info:
        create_model("loda_b16", pretrained=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in msg and "--vit-weights" in msg
    with pytest.raises(BackboneWeightsError, match="no weights file at"):
        create_model("loda_tiny", vit_weights=tmp_path / "nope.safetensors")


def _populate_hf_cache(hub, repo_id, state, filename="model.safetensors"):
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    if filename.endswith(".safetensors"):
        save_file(state, str(snap / filename))
    else:
        torch.save(state, snap / filename)


def test_pretrained_from_hugging_face_cache(tiny_backbone_files, tmp_path, monkeypatch):
    _, vit, cnn = tiny_backbone_files
    hub = tmp_path / "hf" / "hub"
    _populate_hf_cache(hub, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", vit)
    _populate_hf_cache(hub, "timm/resnet18.a1_in1k", cnn, filename="pytorch_model.bin")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_in_hf_cache("resnet18.a1_in1k").name == "pytorch_model.bin"
    model = create_model("loda_tiny", pretrained=True)
    assert torch.equal(model.state_dict()["cls_token"], vit["cls_token"])
    assert torch.equal(model.state_dict()["feature_model.conv1.weight"], cnn["conv1.weight"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/loda-pwned-by-test",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    if os.path.exists("/tmp/loda-pwned-by-test"):
        os.remove("/tmp/loda-pwned-by-test")
    with pytest.raises(BackboneWeightsError, match="weights-only"):
        read_weights(path)
    assert not os.path.exists("/tmp/loda-pwned-by-test")
