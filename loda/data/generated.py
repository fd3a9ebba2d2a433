"""Generated stand-in images, for checks that need pictures when no real ones are at hand.

Procedural scenes (colour gradients, blocky low-frequency noise, ellipses and rectangles) at
increasing blur, noise or JPEG damage, written as PNG and JPEG files. Used only where real
images are missing (the export verification without the demo photographs, the GPU check
without its bundle), and always named as "generated" by the caller. numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["DESCRIPTION", "generate_images"]

DESCRIPTION = "procedural images (gradients, shapes, blur/noise/JPEG levels)"


def generate_images(out_dir: Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` generated images to ``out_dir`` (reproducible from ``seed``); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (384, 512) if i % 5 == 4 else (512, 384)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(0.005, 0.03, 3)
        base = np.stack(
            [127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)], axis=-1
        )
        base += rng.normal(0, 12, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            x1, y1 = x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
        level = i % 5
        kind = (i // 5) % 3
        if kind == 0 and level:
            im = im.filter(ImageFilter.GaussianBlur(radius=0.8 * level))
        elif kind == 1 and level:
            arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 6 * level, (h, w, 3))
            im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if kind == 2:
            path = out_dir / f"gen_{i:03d}.jpg"
            im.save(path, quality=max(5, 90 - 20 * level))
        else:
            path = out_dir / f"gen_{i:03d}.png"
            im.save(path)
        paths.append(path)
    return paths
