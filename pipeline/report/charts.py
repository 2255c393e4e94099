"""Line charts of the report as PNG bytes, drawn with PIL (the report adds no plotting dependency)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
"""Series colours (RGB), in legend order."""


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (540, 300),
    level: float | None = None,
) -> bytes:
    """A line chart (PNG bytes) of named series of (x, y) points, drawn with PIL; non-finite points are
    dropped, and a chart with no points says so. ``size`` is (width, height) in pixels; ``level`` draws a
    horizontal reference line (in red) at that y."""
    width, height = size
    left, right, top, bottom = 60, 190, 28, 42
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 6), title, fill="black", font=font)
    clean = {
        name: sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline="black")
    if not clean:
        draw.text((left + 10, top + 10), "no data", fill="gray", font=font)
        return _png(image)
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points] + ([level] if level is not None else [])
    x_low, x_high = _span(min(xs), max(xs))
    y_low, y_high = _span(min(ys), max(ys))

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            box[0] + (x - x_low) / (x_high - x_low) * (box[2] - box[0]),
            box[3] - (y - y_low) / (y_high - y_low) * (box[3] - box[1]),
        )

    for x in _ticks(x_low, x_high):
        px, _ = at(x, y_low)
        draw.line([(px, box[3]), (px, box[3] + 4)], fill="black")
        draw.text((px - 12, box[3] + 6), f"{x:.4g}", fill="black", font=font)
    for y in _ticks(y_low, y_high):
        _, py = at(x_low, y)
        draw.line([(box[0] - 4, py), (box[0], py)], fill="black")
        draw.line([(box[0] + 1, py), (box[2] - 1, py)], fill=(235, 235, 235))
        draw.text((4, py - 6), f"{y:.4g}", fill="black", font=font)
    if y_low < 0 < y_high:
        _, zero = at(x_low, 0.0)
        draw.line([(box[0] + 1, zero), (box[2] - 1, zero)], fill=(170, 170, 170))
    if level is not None:
        _, py = at(x_low, level)
        draw.line([(box[0] + 1, py), (box[2] - 1, py)], fill=(220, 60, 60))
    draw.text(((box[0] + box[2]) // 2 - 3 * len(x_label), height - 16), x_label, fill="black", font=font)
    if y_label:
        draw.text((4, height - 16), y_label, fill="gray", font=font)
    shown = list(clean.items())[:14]
    for index, (name, points) in enumerate(shown):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [at(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        legend_y = top + 14 * index
        draw.line([(width - right + 8, legend_y + 6), (width - right + 22, legend_y + 6)], fill=colour, width=2)
        draw.text((width - right + 26, legend_y), name[:28], fill="black", font=font)
    if len(clean) > len(shown):
        draw.text(
            (width - right + 8, top + 14 * len(shown)), f"+{len(clean) - len(shown)} more", fill="gray", font=font
        )
    return _png(image)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step)
    return [round(i * step, 12) for i in range(first, math.floor(high / step) + 1)]


def _span(low: float, high: float) -> tuple[float, float]:
    if high > low:
        pad = 0.04 * (high - low)
        return low - pad, high + pad
    pad = abs(low) * 0.1 or 1.0
    return low - pad, high + pad


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
