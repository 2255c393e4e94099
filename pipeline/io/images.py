"""Image grids and PNG writing (no torchvision): tensors in [0, 1], [N, 3, H, W] or [3, H, W]."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.io.files import atomic_path


def make_grid(images: torch.Tensor, columns: int, padding: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """Tile images [N, 3, H, W] row-major into one image [3, rows*(H+p)+p, columns*(W+p)+p]."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = torch.full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), pad_value
    )
    for index in range(n):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def side_by_side(
    left: torch.Tensor, right: torch.Tensor, gap: int = 4, pad_value: float = 1.0
) -> torch.Tensor:
    """Two images [3, H, W1] and [3, H, W2] next to each other with a ``gap``-pixel margin: [3, H, W1+gap+W2]."""
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"side_by_side: heights differ ({left.shape[1]} vs {right.shape[1]})")
    spacer = torch.full((left.shape[0], left.shape[1], gap), pad_value)
    return torch.cat([left, spacer, right], dim=2)


def save_png(image: torch.Tensor, path: str | Path, upscale: int = 1) -> None:
    """Write an image [3, H, W] in [0, 1] as PNG atomically, enlarged ``upscale`` times (nearest neighbour)."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array)
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    with atomic_path(path, ".png") as tmp:
        picture.save(tmp, format="PNG")
