"""Image grids and PNG writing (no torchvision): tensors in [0, 1], [N, 3, H, W] or [3, H, W]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


FRAME_COLOURS = {"clean": (0, 160, 60), "flip": (230, 150, 0), "none": (150, 150, 150), "broken": (210, 0, 0)}
"""Frame colour of a grid cell per judge verdict (green: clean flip; orange: flip with an off-target change;
grey: no flip; red: broken image). Cells without a verdict have no frame."""


def labelled_grid(
    tiles: torch.Tensor,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    verdicts: Sequence[Sequence[str]] | None = None,
    upscale: int = 2,
    title: str = "",
) -> torch.Tensor:
    """A picture [3, H', W'] of ``tiles`` [R, C, 3, H, W] in [0, 1], each enlarged ``upscale`` times (nearest
    neighbour), with a label left of every row, one above every column, an optional title line, and a
    coloured frame around cell (r, c) for ``verdicts[r][c]`` in :data:`FRAME_COLOURS` (and a legend)."""
    from PIL import ImageDraw, ImageFont

    rows, columns = tiles.shape[:2]
    if len(row_labels) != rows or len(column_labels) != columns:
        raise ValueError(f"labelled_grid: {rows}x{columns} tiles, {len(row_labels)} row and "
                         f"{len(column_labels)} column labels")  # fmt: skip
    font = ImageFont.load_default(size=11)
    line = 14
    frame, gap = 2, 2
    height, width = tiles.shape[-2] * upscale, tiles.shape[-1] * upscale
    cell_h, cell_w = height + 2 * frame + gap, width + 2 * frame + gap
    label_w = 8 + max(int(font.getlength(label)) for label in row_labels)
    header = line * (1 + bool(title) + (verdicts is not None))
    picture = Image.new("RGB", (label_w + columns * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(picture)
    top = 0
    if title:
        draw.text((2, 0), title, fill="black", font=font)
        top += line
    if verdicts is not None:
        left = 2
        for verdict, colour in FRAME_COLOURS.items():
            draw.rectangle((left, top + 3, left + 8, top + 11), fill=colour)
            draw.text((left + 11, top), verdict, fill="black", font=font)
            left += 20 + int(font.getlength(verdict))
        top += line
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * cell_w + frame, top), label, fill="black", font=font)
    for r in range(rows):
        y = header + r * cell_h
        draw.text((2, y + height // 2 - 6), row_labels[r], fill="black", font=font)
        for c in range(columns):
            x = label_w + c * cell_w
            colour = FRAME_COLOURS.get(verdicts[r][c]) if verdicts is not None else None
            if colour is not None:
                draw.rectangle((x, y, x + width + 2 * frame - 1, y + height + 2 * frame - 1), fill=colour)
            array = (tiles[r, c].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            tile = Image.fromarray(array).resize((width, height), Image.NEAREST)
            picture.paste(tile, (x + frame, y + frame))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255.0
