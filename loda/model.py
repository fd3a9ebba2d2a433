"""LoDa: local-distortion-aware adaptation of a frozen ViT for no-reference IQA.

Paper: Xu et al., "Boosting Image Quality Assessment through Efficient Transformer Adaptation
with Local Feature Enhancement", CVPR 2024. The architecture follows ``shared/docs/MODEL.md``
and the authors' release: a frozen ViT carries the global view, a frozen CNN feature extractor
supplies multi-scale local distortion features, and a small trainable ``learner`` injects
those features before the ViT blocks through low-rank cross-attention adapters.

Module and parameter names are the authors' (their ``LoDa`` subclasses timm's
``VisionTransformer``): the ViT parts sit at the top level (``patch_embed``, ``cls_token``,
``pos_embed``, ``blocks``, ``norm``), the CNN is ``feature_model`` and the trainable part is
``learner`` (``conv``, ``down_proj``, ``cross_attn``, ``up_proj``, ``scale_factor``, ``head``).
A timm ViT state dict therefore loads into the top level, a timm CNN state dict into
``feature_model`` and an authors' checkpoint into ``learner`` and ``feature_model``.

Input: float32 NCHW crops, normalised with the ImageNet mean/std (``loda.preprocess``).
Output of ``forward``: ``(B, num_outputs)`` cosine scores in [-1, 1], as the authors' model.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from .config import LoDaConfig, get_config

__all__ = ["CrossAttention", "Learner", "LoDa", "NormedLinear", "create_model"]


class NormedLinear(nn.Module):
    """Cosine-similarity head; ``weight`` is stored (in_features, out_features) as the authors'."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class CrossAttention(nn.Module):
    """Multi-head cross-attention of width ``dim``: queries from ViT tokens, keys/values from
    the distortion tokens. ``kv`` packs keys first, then values, each split per head."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, dim * 2, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, dim = tokens.shape
        head_dim = dim // self.num_heads
        kv = self.kv(tokens).reshape(batch, n_tokens, 2, self.num_heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        n_query = query.shape[1]
        q = self.q(query).reshape(batch, n_query, self.num_heads, head_dim).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, n_query, dim)
        return self.proj(x)


class Learner(nn.Module):
    """The trainable part: distortion-token convs, the adapters and the cosine head."""

    def __init__(
        self,
        embed_dim: int,
        feature_channels: list[int],
        latent_dim: int,
        num_heads: int,
        num_interactions: int,
        grid_size: int,
        num_outputs: int,
    ) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, latent_dim, kernel_size=1, bias=True),
                nn.GELU(),
                nn.Conv2d(latent_dim, latent_dim, kernel_size=3, padding=1, bias=False),
                nn.AdaptiveAvgPool2d(grid_size),
            )
            for channels in feature_channels
        )
        self.down_proj = nn.ModuleList(
            Mlp(in_features=embed_dim, hidden_features=latent_dim, out_features=latent_dim)
            for _ in range(num_interactions)
        )
        self.cross_attn = nn.ModuleList(
            CrossAttention(latent_dim, num_heads) for _ in range(num_interactions)
        )
        self.up_proj = nn.ModuleList(
            Mlp(in_features=latent_dim, hidden_features=embed_dim, out_features=embed_dim)
            for _ in range(num_interactions)
        )
        self.scale_factor = nn.Parameter(torch.empty(num_interactions, embed_dim))
        trunc_normal_(self.scale_factor, std=0.02)
        self.head = NormedLinear(embed_dim, num_outputs)

    def distortion_tokens(self, features: list[torch.Tensor]) -> torch.Tensor:
        """CNN feature maps -> (B, len(features) * grid**2, latent_dim) tokens."""
        tokens = []
        for conv, feature in zip(self.conv, features, strict=True):
            t = conv(feature)
            tokens.append(t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1]))
        return torch.cat(tokens, dim=1)

    def adapt(self, index: int, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The residual update injected before a ViT block."""
        d = self.down_proj[index](x)
        d = d + self.cross_attn[index](d, tokens)
        return x + self.up_proj[index](d) * self.scale_factor[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class LoDa(nn.Module):
    """LoDa built from a :class:`~loda.config.LoDaConfig` with random-init backbones.

    Use :func:`create_model` (or :func:`loda.backbones.load_backbones`) to get pretrained
    backbones; this constructor never touches the network or the disk.
    """

    def __init__(self, config: LoDaConfig) -> None:
        super().__init__()
        self.config = config
        for name in (config.vit_name, config.cnn_name):
            if not timm.is_model(name):
                raise ValueError(f"timm {timm.__version__} has no model {name!r}")
        vit = timm.create_model(
            config.vit_name,
            pretrained=False,
            num_classes=0,
            img_size=config.img_size,
            dynamic_img_size=False,  # fixed crops: the authors' stem, exportable
        )
        _check_supported_vit(vit, config.vit_name)
        # Adopt the ViT's parts at the top level, exactly where the authors' subclass has them.
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim = vit.embed_dim
        depth = len(self.blocks)
        if depth % config.num_interactions:
            raise ValueError(
                f"num_interactions {config.num_interactions} must divide the ViT depth {depth}"
            )
        self.interaction_every = depth // config.num_interactions

        self.feature_model = timm.create_model(
            config.cnn_name,
            pretrained=False,
            features_only=True,
            out_indices=config.cnn_out_indices,
        )
        self.feature_channels = list(self.feature_model.feature_info.channels())
        self.learner = Learner(
            embed_dim=self.embed_dim,
            feature_channels=self.feature_channels,
            latent_dim=config.latent_dim,
            num_heads=config.cross_attn_heads,
            num_interactions=config.num_interactions,
            grid_size=config.grid_size,
            num_outputs=config.num_outputs,
        )
        self.dropout = nn.Dropout(config.dropout)

    # -- parameter groups -------------------------------------------------------------------
    def vit_state_keys(self) -> list[str]:
        """Keys of this model's state dict that a timm ViT state dict provides."""
        return [k for k in self.state_dict() if not k.startswith(("learner.", "feature_model."))]

    def freeze_backbones(self) -> None:
        """Only the learner trains. The CNN's BatchNorm running statistics still update in
        train mode, as in the authors' training (they are part of their checkpoints)."""
        for name, param in self.named_parameters():
            param.requires_grad = name.startswith("learner.")

    def unfreeze(self) -> None:
        for param in self.parameters():
            param.requires_grad = True

    # -- forward ----------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.distortion_tokens(self.feature_model(x))

    def forward_features(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm_pre(x)
        for i, block in enumerate(self.blocks):
            if i % self.interaction_every == 0:
                x = self.learner.adapt(i // self.interaction_every, x, tokens)
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float crops (B, 3, H, W) -> cosine scores (B, num_outputs)."""
        tokens = self.forward_tokens(x)
        features = self.forward_features(x, tokens)
        return self.learner(self.dropout(features))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """One quality score per crop, shape (B,)."""
        return self(x)[:, 0]


def _check_supported_vit(vit: nn.Module, name: str) -> None:
    unsupported = []
    if getattr(vit, "cls_token", None) is None:
        unsupported.append("no class token")
    if getattr(vit, "num_reg_tokens", 0):
        unsupported.append("register tokens")
    if getattr(vit, "no_embed_class", False):
        unsupported.append("position embedding without the class token")
    if getattr(vit, "dynamic_img_size", False):
        unsupported.append("dynamic image size")
    if unsupported:
        raise ValueError(f"ViT {name!r} is not supported by LoDa: {', '.join(unsupported)}")


def create_model(
    config: str | LoDaConfig,
    *,
    pretrained: bool = False,
    vit_weights: str | None = None,
    cnn_weights: str | None = None,
) -> LoDa:
    """Build a LoDa model.

    ``pretrained=False`` with no weight files gives random-init backbones (tests, demo).
    With ``pretrained=True`` the backbone weights come from ``vit_weights``/``cnn_weights`` when
    given, else from the local Hugging Face cache; anything missing is a
    :class:`~loda.backbones.BackboneWeightsError`, never a silent random init.
    """
    model = LoDa(get_config(config))
    if pretrained or vit_weights or cnn_weights:
        from .backbones import load_backbones

        load_backbones(
            model, vit_weights=vit_weights, cnn_weights=cnn_weights, require_both=pretrained
        )
    return model


def perturb(model: LoDa, seed: int = 0) -> LoDa:
    """Give a random-init model non-trivial learner and BatchNorm state, in place.

    Random init leaves the adapters' scale factors near 0.02, so every learner path contributes
    almost nothing and a bug or a precision loss there could hide below a check's tolerance;
    tests and benchmarks that use random weights perturb them first (seeded).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sf = model.learner.scale_factor
        sf.copy_(torch.randn(sf.shape, generator=g) * 0.5)
        for name, buf in model.feature_model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model
