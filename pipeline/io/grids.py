"""Labelled image grids: tiles with row and column labels and per-cell coloured frames (PIL, no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

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


def titled(image: torch.Tensor, title: str, upscale: int = 1) -> torch.Tensor:
    """``image`` [3, H, W] in [0, 1], enlarged ``upscale`` times (nearest neighbour), under a line of text:
    [3, 14 + H*upscale, W*upscale] (wider when the title needs it)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    body = Image.fromarray(array)
    body = body.resize((body.width * upscale, body.height * upscale), Image.NEAREST)
    width = max(body.width, 4 + int(font.getlength(title)))
    picture = Image.new("RGB", (width, 14 + body.height), "white")
    ImageDraw.Draw(picture).text((2, 0), title, fill="black", font=font)
    picture.paste(body, (0, 14))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255.0
