"""An independent LoDa forward pass, written from shared/docs/MODEL.md, used as a test oracle.

It shares no code with ``loda.model``: the backbones are fresh timm models built the way the
authors build them (a ``VisionTransformer`` with the ViT-B/16 arguments, a ``features_only``
CNN), and the learner is plain functional torch over the *authors'* state-dict keys
(``learner.conv.{i}.0.weight`` ...), so a naming or wiring mistake in ``loda.model`` shows up
as a mismatch here.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer


def build_backbones(vit_kwargs: dict, cnn_name: str, out_indices, state: dict) -> tuple:
    vit = VisionTransformer(num_classes=0, **vit_kwargs)
    vit_state = {k: v for k, v in state.items() if not k.startswith(("learner.", "feature_model."))}
    missing, unexpected = vit.load_state_dict(vit_state, strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
    cnn = timm.create_model(cnn_name, pretrained=False, features_only=True, out_indices=out_indices)
    cnn.load_state_dict(
        {
            k.removeprefix("feature_model."): v
            for k, v in state.items()
            if k.startswith("feature_model.")
        }
    )
    return vit.eval(), cnn.eval()


def _mlp(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(F.linear(x, sd[prefix + "fc1.weight"], sd[prefix + "fc1.bias"]))
    return F.linear(h, sd[prefix + "fc2.weight"], sd[prefix + "fc2.bias"])


def _cross_attention(sd: dict, prefix: str, query, tokens, heads: int) -> torch.Tensor:
    b, n, r = tokens.shape
    hd = r // heads
    kv = F.linear(tokens, sd[prefix + "kv.weight"])  # (b, n, 2r): keys first, then values
    k = kv[..., :r].reshape(b, n, heads, hd).permute(0, 2, 1, 3)
    v = kv[..., r:].reshape(b, n, heads, hd).permute(0, 2, 1, 3)
    q = F.linear(query, sd[prefix + "q.weight"])
    q = q.reshape(b, query.shape[1], heads, hd).permute(0, 2, 1, 3)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (r / heads) ** 0.5, dim=-1)
    out = (attn @ v).permute(0, 2, 1, 3).reshape(b, query.shape[1], r)
    return F.linear(out, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


@torch.no_grad()
def reference_forward(
    vit, cnn, state: dict, x: torch.Tensor, *, heads: int, num_interactions: int, grid: int = 7
) -> torch.Tensor:
    """(B, 3, 224, 224) normalised crops -> (B, 1) cosine scores, eval mode."""
    sd = {k.removeprefix("learner."): v for k, v in state.items() if k.startswith("learner.")}
    # 1-2. distortion tokens from the four CNN maps
    tokens = []
    for i, fmap in enumerate(cnn(x)):
        t = F.conv2d(fmap, sd[f"conv.{i}.0.weight"], sd[f"conv.{i}.0.bias"])
        t = F.conv2d(F.gelu(t), sd[f"conv.{i}.2.weight"], padding=1)
        t = F.adaptive_avg_pool2d(t, grid)
        tokens.append(t.flatten(2).transpose(1, 2))  # (B, 49, r), row-major over the 7x7 grid
    tokens = torch.cat(tokens, dim=1)
    # 3. ViT stem
    h = vit.patch_embed(x)
    h = torch.cat([vit.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + vit.pos_embed
    # 4. adapters before blocks (every depth/N blocks)
    depth = len(vit.blocks)
    every = depth // num_interactions
    for i in range(depth):
        if i % every == 0:
            j = i // every
            d = _mlp(sd, f"down_proj.{j}.", h)
            d = d + _cross_attention(sd, f"cross_attn.{j}.", d, tokens, heads)
            h = h + _mlp(sd, f"up_proj.{j}.", d) * sd["scale_factor"][j]
        h = vit.blocks[i](h)
    # 5-6. final norm, class token, cosine head
    cls = vit.norm(h)[:, 0]
    w = sd["head.weight"]
    return F.normalize(cls, dim=1) @ F.normalize(w, dim=0)
