"""The torch path receives exactly the pixels of the shared preprocessing, and those equal the
authors' torchvision pipeline (Resize(384, BICUBIC) on PIL, crop, ToTensor, Normalize)."""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from loda.inference import crops_to_tensor, score_image
from loda.preprocess import PreprocessConfig, normalize, preprocess_image_with_info


def test_model_input_equals_shared_preprocessing_and_torchvision(tiny_model, photo):
    cfg = PreprocessConfig()
    seen = []
    tiny_model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    result = score_image(tiny_model, photo, cfg)
    model_input = torch.cat(seen)
    assert result.crop_scores.shape == (15,)

    info = preprocess_image_with_info(photo, cfg)
    shared = torch.from_numpy(normalize(info.crops, cfg.mean, cfg.std))
    assert torch.equal(model_input, shared)
    assert torch.equal(crops_to_tensor(info.crops, cfg), shared)

    # The authors' pipeline, step by step with torchvision, at the same crop positions.
    pil = Image.open(photo).convert("RGB")
    resized = T.Resize(384, interpolation=T.InterpolationMode.BICUBIC)(pil)
    assert resized.size == (info.resized_width, info.resized_height)
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean=cfg.mean, std=cfg.std)])
    authors = torch.stack(
        [to_tensor(TF.crop(resized, int(y), int(x), 224, 224)) for y, x in info.positions]
    )
    assert torch.equal(model_input, authors)


def test_random_layout_is_seeded_through_the_torch_path(tiny_model, photo):
    cfg = PreprocessConfig(layout="random")
    a = score_image(tiny_model, photo, cfg, seed=7)
    b = score_image(tiny_model, photo, cfg, seed=7)
    c = score_image(tiny_model, photo, cfg, seed=8)
    assert a.score == b.score
    assert a.score != c.score
