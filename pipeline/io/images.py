"""Image files in and out, and image grids (no torchvision): tensors in [0, 1], [N, 3, H, W] or [3, H, W]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Files read as input images (case-insensitive)."""

CROPS = ("none", "center")
"""How an input whose aspect ratio differs from the model's is fitted: refused, or centre-cropped."""

ASPECT_TOLERANCE = 0.01
"""Relative aspect-ratio difference accepted without cropping (resizing then distorts by at most this)."""


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


def list_images(sources: Sequence[str | Path]) -> list[Path]:
    """The image files among ``sources`` (files, or folders whose image files are taken in name order)."""
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            paths += sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            paths.append(source)
        else:
            raise ConfigError(f"input '{source}': no such file or folder")
    if not paths:
        raise ConfigError(f"inputs {[str(s) for s in sources]}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_images(paths: Sequence[Path], size: tuple[int, int], crop: str = "none") -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] of ``paths`` at ``size`` = (H, W) pixels (the model's, see
    :attr:`~pipeline.diffusion.models.DiffusionModel.image_size`), resized with a bicubic filter.

    An image whose aspect ratio differs from the model's by more than :data:`ASPECT_TOLERANCE` is refused with
    ``crop`` "none" and centre-cropped to the model's aspect ratio with ``crop`` "center"."""
    if crop not in CROPS:
        raise ConfigError(f"edit.crop {crop!r}: expected one of {', '.join(CROPS)}")
    height, width = size
    images = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                picture = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ConfigError(f"image '{path}': not an image that can be read ({type(error).__name__})") from None
        ratio, wanted = picture.width / picture.height, width / height
        if abs(ratio / wanted - 1) > ASPECT_TOLERANCE:
            if crop == "none":
                raise ConfigError(
                    f"image '{path}': {picture.width}x{picture.height} pixels, but the model makes {width}x{height} "
                    "images; crop it to that aspect ratio or set edit.crop=center (--crop center)"
                )
            picture = _centre_crop(picture, wanted)
        if (picture.width, picture.height) != (width, height):
            picture = picture.resize((width, height), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(images)


def _centre_crop(picture: Image.Image, aspect: float) -> Image.Image:
    """The largest centred box of ``picture`` with width / height = ``aspect``."""
    width = min(picture.width, round(picture.height * aspect))
    height = min(picture.height, round(width / aspect))
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    return picture.crop((left, top, left + width, top + height))
