"""Model configuration records for LoDa (Xu et al., CVPR 2024).

One frozen record, :class:`LoDaConfig`, describes a LoDa architecture completely: the two
backbones (timm names and pretrained tags), the CNN feature stages, the learner's latent width
``r``, its cross-attention heads ``h``, the number of interactions ``N``, the token grid and the
dropout. Every named configuration, the paper's ``loda_b16`` and the ablations of Tables 8, 9, 10
and 12 of the supplementary material, is such a record; none needs code changes.

This module imports neither torch nor timm, so runtimes and metadata readers can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["CONFIGS", "LoDaConfig", "get_config", "list_configs"]


@dataclass(frozen=True)
class LoDaConfig:
    """Everything that defines a LoDa architecture.

    ``num_interactions`` (N) must divide the ViT depth L: the L blocks are split into N equal
    groups and an adapter (down-projection, cross-attention, up-projection) runs only before the
    first block of each group (supplementary, section 8.5). N = L is the paper's default.
    """

    name: str
    vit_name: str = "vit_base_patch16_224"
    vit_pretrained_tag: str | None = "augreg2_in21k_ft_in1k"
    cnn_name: str = "resnet50"
    # None: timm's default pretrained tag for the CNN (for resnet50: a1_in1k).
    cnn_pretrained_tag: str | None = None
    cnn_out_indices: tuple[int, ...] = (1, 2, 3, 4)
    latent_dim: int = 64
    cross_attn_heads: int = 4
    num_interactions: int = 12
    grid_size: int = 7
    dropout: float = 0.1
    num_outputs: int = 1
    img_size: int = 224

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name must not be empty")
        if self.latent_dim <= 0:
            problems.append(f"latent_dim must be positive, got {self.latent_dim}")
        if self.cross_attn_heads <= 0 or self.latent_dim % self.cross_attn_heads:
            problems.append(
                f"latent_dim {self.latent_dim} must be divisible by cross_attn_heads "
                f"{self.cross_attn_heads}"
            )
        if self.num_interactions <= 0:
            problems.append(f"num_interactions must be positive, got {self.num_interactions}")
        if self.grid_size <= 0:
            problems.append(f"grid_size must be positive, got {self.grid_size}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.cnn_out_indices:
            problems.append("cnn_out_indices must name at least one feature stage")
        if self.num_outputs <= 0:
            problems.append(f"num_outputs must be positive, got {self.num_outputs}")
        if problems:
            raise ValueError(f"invalid LoDa config {self.name!r}: " + "; ".join(problems))
        # JSON round trips give lists; keep the record hashable and comparable.
        object.__setattr__(self, "cnn_out_indices", tuple(int(i) for i in self.cnn_out_indices))

    @property
    def vit_timm_name(self) -> str:
        """The timm model name with its pretrained tag, e.g. ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
        return _with_tag(self.vit_name, self.vit_pretrained_tag)

    @property
    def cnn_timm_name(self) -> str:
        return _with_tag(self.cnn_name, self.cnn_pretrained_tag)

    def replace(self, **changes: Any) -> LoDaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cnn_out_indices"] = list(self.cnn_out_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoDaConfig:
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        if "name" not in d:
            raise ValueError("model config has no 'name'")
        return cls(**d)


def _with_tag(name: str, tag: str | None) -> str:
    return f"{name}.{tag}" if tag else name


_B16 = LoDaConfig(name="loda_b16")

CONFIGS: dict[str, LoDaConfig] = {
    # The paper: ViT-B/16 (ImageNet-21k, fine-tuned on 1k) + ResNet50, r=64, h=4, N=12.
    "loda_b16": _B16,
    # Small model for tests and the demo: same code path, ViT-Tiny/16 (depth 12, width 192) and
    # ResNet18 (64/128/256/512 channels).
    "loda_tiny": LoDaConfig(
        name="loda_tiny",
        vit_name="vit_tiny_patch16_224",
        vit_pretrained_tag="augreg_in21k_ft_in1k",
        cnn_name="resnet18",
        cnn_pretrained_tag=None,
        latent_dim=32,
        cross_attn_heads=4,
    ),
    # The demo's model: timm's smallest ViT (width 64, depth 6, 2 heads) and ResNet (stages of
    # 32/48/192/96 channels), same code path. Small enough to train from random init on a 2-core
    # CPU in minutes, which is what `make demo` does (pretrained weights are not bundled).
    "loda_micro": LoDaConfig(
        name="loda_micro",
        vit_name="test_vit",
        vit_pretrained_tag="r160_in1k",
        cnn_name="test_resnet",
        cnn_pretrained_tag="r160_in1k",
        latent_dim=32,
        cross_attn_heads=4,
        num_interactions=6,
    ),
    # Table 8: other CNNs (all timm features_only models; the last four stages).
    "loda_b16_densenet121": _B16.replace(name="loda_b16_densenet121", cnn_name="densenet121"),
    "loda_b16_efficientnet_b0": _B16.replace(
        name="loda_b16_efficientnet_b0", cnn_name="efficientnet_b0"
    ),
    "loda_b16_resnet34": _B16.replace(name="loda_b16_resnet34", cnn_name="resnet34"),
    "loda_b16_repvgg_a2": _B16.replace(name="loda_b16_repvgg_a2", cnn_name="repvgg_a2"),
    "loda_b16_resnet101": _B16.replace(name="loda_b16_resnet101", cnn_name="resnet101"),
    "loda_b16_convnext_small": _B16.replace(
        name="loda_b16_convnext_small",
        cnn_name="convnext_small",
        cnn_pretrained_tag="fb_in22k_ft_in1k",
        cnn_out_indices=(0, 1, 2, 3),
    ),
    # Table 9: latent dimension r.
    "loda_b16_r48": _B16.replace(name="loda_b16_r48", latent_dim=48),
    "loda_b16_r80": _B16.replace(name="loda_b16_r80", latent_dim=80),
    # Table 10: cross-attention heads h.
    "loda_b16_h2": _B16.replace(name="loda_b16_h2", cross_attn_heads=2),
    "loda_b16_h8": _B16.replace(name="loda_b16_h8", cross_attn_heads=8),
    # Table 12: number of interactions N.
    "loda_b16_n3": _B16.replace(name="loda_b16_n3", num_interactions=3),
    "loda_b16_n6": _B16.replace(name="loda_b16_n6", num_interactions=6),
}


def list_configs() -> list[str]:
    return sorted(CONFIGS)


def get_config(name_or_config: str | LoDaConfig) -> LoDaConfig:
    if isinstance(name_or_config, LoDaConfig):
        return name_or_config
    try:
        return CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(
            f"unknown LoDa config {name_or_config!r}; known: {', '.join(list_configs())}"
        ) from None
