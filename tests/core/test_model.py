from __future__ import annotations

import pytest
import torch
from spec_reference import build_backbones, reference_forward

from loda.config import CONFIGS, get_config
from loda.model import LoDa, create_model

VIT_ARGS = {
    # The authors' ViT arguments (their config/model/loda.yaml) and ViT-Tiny's.
    "loda_b16": dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=True
    ),
    "loda_tiny": dict(
        img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, qkv_bias=True
    ),
}


def _input(batch=2, seed=0):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["loda_tiny", "loda_b16"])
def test_forward_shapes(name, tiny_model, b16_model):
    model = tiny_model if name == "loda_tiny" else b16_model
    with torch.no_grad():
        out = model(_input())
        scores = model.score(_input())
    assert out.shape == (2, 1)
    assert scores.shape == (2,)
    assert torch.all(out.abs() <= 1 + 1e-6)  # cosine similarity


def _check_against_reference(model: LoDa, name: str, num_interactions: int):
    state = model.state_dict()
    cfg = model.config
    vit, cnn = build_backbones(VIT_ARGS[name], cfg.cnn_name, cfg.cnn_out_indices, state)
    x = _input(3, seed=5)
    with torch.no_grad():
        ours = model.eval()(x)
    ref = reference_forward(
        vit, cnn, state, x, heads=cfg.cross_attn_heads, num_interactions=num_interactions
    )
    assert ours.shape == ref.shape == (3, 1)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-5, diff
    # The adapters must actually move the score (so the comparison above is not vacuous).
    with torch.no_grad():
        sf = model.learner.scale_factor.clone()
        model.learner.scale_factor.zero_()
        without = model(x)
        model.learner.scale_factor.copy_(sf)
    assert (without - ours).abs().max().item() > 1e-3


def test_tiny_matches_spec_reference(tiny_model):
    _check_against_reference(tiny_model, "loda_tiny", 12)


@pytest.mark.slow
def test_b16_matches_spec_reference(b16_model):
    _check_against_reference(b16_model, "loda_b16", 12)


@pytest.mark.parametrize("n", [3, 6])
def test_fewer_interactions_match_reference(n):
    torch.manual_seed(n)
    from conftest import perturb

    model = perturb(LoDa(get_config("loda_tiny").replace(name=f"tiny_n{n}", num_interactions=n)))
    assert len(model.learner.down_proj) == n
    assert model.learner.scale_factor.shape == (n, 192)
    _check_against_reference(model, "loda_tiny", n)


def test_adapters_run_before_first_block_of_each_group():
    model = LoDa(get_config("loda_tiny").replace(name="t", num_interactions=3)).eval()
    events = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: events.append(f"block{i}"))
    for j, mlp in enumerate(model.learner.down_proj):
        mlp.register_forward_pre_hook(lambda m, a, j=j: events.append(f"adapter{j}"))
    with torch.no_grad():
        model(_input(1))
    assert events[:2] == ["adapter0", "block0"]
    assert events.index("adapter1") == events.index("block4") - 1
    assert events.index("adapter2") == events.index("block8") - 1
    assert sum(e.startswith("adapter") for e in events) == 3


def test_interactions_must_divide_depth():
    with pytest.raises(ValueError, match="must divide the ViT depth 12"):
        LoDa(get_config("loda_tiny").replace(name="t", num_interactions=5))


def test_config_validation_and_round_trip():
    cfg = get_config("loda_b16")
    assert cfg.replace(name="x").to_dict()["name"] == "x"
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible by cross_attn_heads"):
        cfg.replace(latent_dim=64, cross_attn_heads=5)
    with pytest.raises(ValueError, match="unknown model config keys: bogus"):
        type(cfg).from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown LoDa config"):
        get_config("nope")
    assert cfg.vit_timm_name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    b16 = get_config("loda_b16")
    assert (b16.latent_dim, b16.cross_attn_heads, b16.num_interactions, b16.grid_size) == (
        64,
        4,
        12,
        7,
    )


def test_frozen_backbones_train_only_the_learner_and_bn_stats_drift(tiny_model):
    model = tiny_model
    model.freeze_backbones()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("learner.") for n in trainable)
    assert trainable == {f"learner.{n}" for n, _ in model.learner.named_parameters()}

    model.train()
    bn_mean = model.feature_model.bn1.running_mean.clone()
    tracked = int(model.feature_model.bn1.num_batches_tracked)
    loss = model(_input(4)).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("learner."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert not torch.equal(model.feature_model.bn1.running_mean, bn_mean)
    assert int(model.feature_model.bn1.num_batches_tracked) == tracked + 1

    model.eval()
    frozen = model.feature_model.bn1.running_mean.clone()
    with torch.no_grad():
        a = model(_input(2))
        b = model(_input(2))
    assert torch.equal(model.feature_model.bn1.running_mean, frozen)
    assert torch.equal(a, b)  # no dropout in eval


def test_dropout_is_active_in_training(tiny_model):
    tiny_model.train()
    with torch.no_grad():
        a = tiny_model(_input(2))
        b = tiny_model(_input(2))
    assert not torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_named_config_builds_and_runs(name):
    cfg = CONFIGS[name]
    model = create_model(name).eval()
    channels = model.feature_model.feature_info.channels()
    assert len(channels) == 4
    for conv, c in zip(model.learner.conv, channels, strict=True):
        assert conv[0].in_channels == c and conv[0].out_channels == cfg.latent_dim
    assert len(model.learner.down_proj) == cfg.num_interactions
    assert model.learner.cross_attn[0].num_heads == cfg.cross_attn_heads
    # features at strides 4..32 for a 224 crop become 4 x 7 x 7 tokens
    with torch.no_grad():
        tokens = model.forward_tokens(_input(1))
        assert tokens.shape == (1, 4 * 49, cfg.latent_dim)
        assert model(_input(1)).shape == (1, 1)
