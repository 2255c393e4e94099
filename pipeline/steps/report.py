"""Step ``report``: the study report, one self-contained HTML page (``report/index.html``) built from the
pipeline's outputs.

Every input is optional; a missing one is named in a note on the page instead of failing:

- ``plots/evaluate_summary.json`` and ``plots/evaluate_methods.csv``: the method comparison at operating scales and
  the conditional check; ``plots/evaluate/judge.json``: every direction's judged sides (tables, with intervals);
- ``plots/evaluate/<method>.png``: labelled edit grids; ``plots/evaluate_curves.csv``: clean-flip and broken
  curves; ``plots/preview/<method>.png``: the preview grids; ``plots/edit/``: the edits of the user's images;
- ``plots/pca_spectrum.csv``, ``plots/jacobian_spectrum.csv``, ``plots/pullback_spectrum.csv``,
  ``plots/pullback_psd.csv``: spectra; ``metrics/*.json``: every stage's metrics; ``params.yaml``: the config.

Images are embedded as base64 PNG data URIs (the page needs no other file), and charts are drawn with
PIL (:func:`line_chart`), so the report adds no plotting dependency.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.io.files import atomic_path
from pipeline.io.tracking import flatten

PARAMS: tuple[str, ...] = ()
"""The params this step reads: none (its stage depends on params.yaml as a file, shown on the page)."""

EVALUATE_SUMMARY = "plots/evaluate_summary.json"
EDIT_GRID = "plots/edit/grid.png"
EDIT_DETAILS = "plots/edit/edits.json"
METHOD_TABLE = "plots/evaluate_methods.csv"
CURVES = "plots/evaluate_curves.csv"
GRID = "plots/evaluate/{method}/grid.png"
DETAILS = "plots/evaluate/{method}/judge.json"
PREVIEW = "plots/preview"
STUDY_VARIANTS = "plots/supervised_study/variants.csv"
STUDY_SAMPLES = "plots/supervised_study/samples.csv"
PARAMS_FILE = "params.yaml"
SPECTRA = (
    # file, x column, y columns (a trailing * matches a prefix), column splitting rows into series, title
    ("plots/pca_spectrum.csv", "component", ["all_steps", "per_step_mean"], None, "PCA: explained variance ratio"),
    ("plots/jacobian_spectrum.csv", "step", ["sigma_*"], None, "Jacobian: singular values per step"),
    ("plots/pullback_spectrum.csv", "index", ["sigma"], "t", "Pullback: singular values (one line per t)"),
    ("plots/pullback_psd.csv", "t", ["mean_frequency"], None, "Pullback: mean spatial frequency of the basis"),
)
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img { image-rendering: pixelated; max-width: 100%; }
.note { background: #fff6d5; border-left: 4px solid #e0b000; padding: 4px 10px; margin: 4px 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.charts img { margin: 4px; border: 1px solid #ddd; }
"""


# ---------------------------------------------------------------------------------------------- charts


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (540, 300),
    level: float | None = None,
) -> bytes:
    """A line chart (PNG bytes) of named series of (x, y) points, drawn with PIL; non-finite points are
    dropped, and a chart with no points says so. ``level`` draws a horizontal reference line (in red)."""
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


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------- inputs


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or (isinstance(value, str) and _is_number(value)):
        number = float(value)
        if number.is_integer() and abs(number) < 1e6 and not isinstance(value, float):
            return str(int(number))
        return f"{number:.3g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "") -> str:
    attribute = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(value))}</td>" for value in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(png: bytes, alt: str, zoom: int = 1) -> str:
    style = ""
    if zoom > 1:
        with Image.open(io.BytesIO(png)) as image:
            style = f' style="width: {min(1160, zoom * image.width)}px"'
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}"{style}>'


# ---------------------------------------------------------------------------------------------- the page


class _Page:
    def __init__(self, root: Path):
        self.root = root
        self.parts: list[str] = []
        self.notes: list[str] = []

    def path(self, name: str) -> Path | None:
        """``root / name`` if it exists, else None and a note that it is missing."""
        path = self.root / name
        if path.exists():
            return path
        self.notes.append(f"{name} not found: skipped")
        return None


def build_report(root: str | Path = ".", title: str = "h-space directions: study report") -> str:
    """The report page (HTML text) of the study whose outputs lie under ``root``."""
    page = _Page(Path(root))
    evaluation = _load_json(page, EVALUATE_SUMMARY)
    details = _load_details(page, evaluation)
    _methods_section(page, evaluation, details)
    _supervised_section(page, details)
    _conditional_section(page, evaluation)
    _supervised_study_section(page)
    _per_method_section(page, details)
    _preview_section(page)
    _edit_section(page)
    _spectra_section(page)
    _metrics_section(page)
    _config_section(page)
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in page.notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"{notes and '<section id=notes><h2>Notes</h2>' + notes + '</section>'}"
        + "".join(page.parts)
        + "</body></html>\n"
    )


def write_report(path: str | Path, text: str) -> None:
    """Write the page atomically."""
    with atomic_path(path, ".html") as tmp:
        tmp.write_text(text, encoding="utf-8")


def _load_details(page: _Page, evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """{"settings": the first method's, "methods": method -> its directions' entries, "grids": method -> the
    row and column labels drawn on its grid} from every evaluated method's details file (methods in the order
    of the method table, else of the metrics)."""
    table = page.root / METHOD_TABLE
    methods = list((evaluation or {}).get("methods", {}))
    if table.is_file():
        methods = [row["method"] for row in read_csv(table)]
    loaded = {method: _load_json(page, DETAILS.format(method=method)) for method in methods}
    present = {method: entry for method, entry in loaded.items() if entry is not None}
    if not present:
        return None
    return {
        "settings": next(iter(present.values())).get("settings", {}),
        "methods": {method: entry.get("directions", []) for method, entry in present.items()},
        "grids": {method: entry.get("grid", {}) for method, entry in present.items()},
    }


def _load_json(page: _Page, name: str) -> dict[str, Any] | None:
    path = page.path(name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        page.notes.append(f"{name} is not valid JSON ({error.msg}): skipped")
        return None


def _rate(entry: Mapping[str, Any] | None) -> str:
    """A judge rate entry as "0.31 [0.17, 0.49] (n 16)"."""
    if not entry or entry.get("rate") is None:
        return "–"
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}] (n {entry['n']})"


def _sides(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """A direction's sides, the positive one (up, plus) first."""
    return sorted(entry["sides"].items(), key=lambda item: item[0] not in ("up", "plus"))


def _worst_off_target(side: Mapping[str, Any]) -> str:
    rates = {name: value.get("rate") or 0.0 for name, value in side.get("off_target", {}).items()}
    if not rates or max(rates.values()) == 0:
        return "–"
    name = max(rates, key=lambda key: rates[key])
    return f"{name} {rates[name]:.2f}"


def _methods_section(page: _Page, evaluation: Mapping[str, Any] | None, details: Mapping[str, Any] | None) -> None:
    path = page.path(METHOD_TABLE)
    page.parts.append("<section id=comparison><h2>Methods at operating scales</h2>")
    if evaluation is not None:
        settings = (details or {}).get("settings", {})
        check = settings.get("broken_check", {})
        page.parts.append(
            "<p>Every direction is edited with each sign separately at every scale of its curve, on "
            f"{html.escape(_cell(evaluation.get('num_samples')))} held-out samples (untargeted files: the first "
            f"{html.escape(_cell(evaluation.get('untargeted_samples')))}). Per sample the classifier decides every "
            "attribute before and after: a <b>flip</b> turns the target to the other side, a <b>clean flip</b> "
            "does so while no other attribute changes and the image is not broken. An image is <b>broken</b> when "
            f"the {html.escape(_cell(check.get('detector')))} check rejects it (threshold "
            f"{html.escape(_cell(check.get('threshold')))}, calibrated on "
            f"{html.escape(_cell(check.get('calibration_samples')))} unedited samples; "
            f"{html.escape(_cell(evaluation.get('unedited_broken')))} of the unedited held-out samples are flagged). "
            "Each side's operating scale has the highest clean-flip rate with at most "
            f"{html.escape(_cell(settings.get('max_broken')))} broken. Rates are over eligible samples (those "
            "that start on the near side), with Wilson 95% intervals in the tables below; untargeted directions "
            "are labelled with the attribute they flip most cleanly on the same samples, which favours them.</p>"
        )
    if path is not None:
        rows = read_csv(path)
        if rows:
            header = list(rows[0])
            page.parts.append(_table(header, [[row[c] for c in header] for row in rows], "methods"))
    page.parts.append("</section>")


def _supervised_section(page: _Page, details: Mapping[str, Any] | None) -> None:
    judged = (details or {}).get("methods", {}).get("supervised")
    if not judged:
        return
    rows = []
    for entry in judged:
        for side, values in _sides(entry):
            rows.append([
                entry["name"], side, values["scale"], _rate(values["flip"]), _rate(values["clean_flip"]),
                _rate(values["broken"]), _worst_off_target(values),
                _rate(values.get("stop_at_flip", {}).get("clean_flip")),
            ])  # fmt: skip
    header = [
        "attribute", "side", "operating scale", "flip", "clean flip", "broken", "worst off-target flip",
        "clean flip, each sample stopped at its first flip",
    ]  # fmt: skip
    page.parts.append(
        "<section id=supervised><h2>Supervised directions, per attribute and side</h2>"
        + _table(header, rows, "supervised")
        + "</section>"
    )


def _conditional_section(page: _Page, evaluation: Mapping[str, Any] | None) -> None:
    if not evaluation or not evaluation.get("conditional"):
        return
    columns = ["flip_plain", "flip_conditional", "partner_flip_plain", "partner_flip_conditional",
               "new_off_target", "new_off_target_attribute"]  # fmt: skip
    rows = [
        [target, side, *(values.get(column) for column in columns)]
        for target, sides in evaluation["conditional"].items()
        for side, values in sides.items()
    ]
    page.parts.append(
        "<section id=conditional><h2>Conditional supervised directions</h2><p>Per sample, on the same samples, "
        "each direction at its own operating scale: the target's flip rate, the rate at which a projected-out "
        "partner attribute flips too, and the largest rise of another attribute's off-target rate.</p>"
        + _table(["target", "side", *(c.replace("_", " ") for c in columns)], rows, "conditional")
        + "</section>"
    )


def _supervised_study_section(page: _Page) -> None:
    variants, samples = page.path(STUDY_VARIANTS), page.path(STUDY_SAMPLES)
    if variants is None:
        return
    rows = read_csv(variants)
    page.parts.append(
        "<section id=supervised-study><h2>Supervised study: estimator, window and injection</h2><p>Each arm "
        "recomputes the supervised directions from the same labelled samples and judges every attribute on both "
        "sides on the study's own held-out seeds (the supervised_study params; disjoint from the seeds above). "
        "<i>default</i> is the configured <code>directions.supervised</code>. Clean flips are at each side's "
        "operating scale; the stop-at-flip column stops each sample at its own smallest flipping scale; window "
        "fractions count from the noisiest step.</p>"
    )
    if rows:
        header = list(rows[0])
        page.parts.append(_table(header, [[row[c] for c in header] for row in rows], "supervised-study"))
    curve = read_csv(samples) if samples is not None else []
    if curve:
        header = list(curve[0])
        page.parts.append(
            "<h3>How many labelled samples a direction needs</h3><p>The default estimator from N random samples "
            "per side of each attribute (all: every labelled sample).</p>"
            + _table(header, [[row[c] for c in header] for row in curve], "few-samples")
        )
        numeric = [row for row in curve if _is_number(row["samples_per_side"])]
        series = {
            name: [(math.log10(_float(row["samples_per_side"])), _float(row[name])) for row in numeric]
            for name in ("mean_clean_flip", "min_clean_flip", "mean_cosine_to_all")
        }
        page.parts.append(
            '<div class="charts">'
            + _img(line_chart(series, "few samples", "log10 samples per side", "rate / cosine"), "")
            + "</div>"
        )
    page.parts.append("</section>")


def _per_method_section(page: _Page, details: Mapping[str, Any] | None) -> None:
    if not details:
        return
    curves_path = page.path(CURVES)
    curves = read_csv(curves_path) if curves_path is not None else []
    page.parts.append("<section id=directions><h2>Directions, method by method</h2>")
    methods = details.get("methods", {})
    table_path = page.root / METHOD_TABLE
    order = [row["method"] for row in read_csv(table_path)] if table_path.is_file() else []
    for method in sorted(methods, key=lambda name: order.index(name) if name in order else len(order)):
        page.parts.append(f'<h3 id="method-{html.escape(method)}">{html.escape(method)}</h3>')
        rows = []
        for entry in methods[method]:
            for side, values in _sides(entry):
                rows.append([
                    entry["name"], side, f"{values['target']} {values['towards']}", values["scale"],
                    _rate(values["flip"]), _rate(values["clean_flip"]), _rate(values["broken"]),
                    _worst_off_target(values), values.get("distortion"), values.get("feasible"),
                    _truth(values),
                ])  # fmt: skip
        header = ["direction", "side", "target", "operating scale", "flip", "clean flip", "broken",
                  "worst off-target flip", "1 - SSIM", "within broken budget", "true factor moved most"]  # fmt: skip
        page.parts.append(_table(header, rows, f"table-{method}"))
        grid = page.path(GRID.format(method=method))
        if grid is not None:
            page.parts.append(
                "<p>Rows: direction · held-out sample, in the table's order; columns: signed scale (0: unedited). "
                "Frames: the judge's verdict against each side's target (green clean flip, orange flip with an "
                "off-target change, grey no flip, red broken; none: the sample was already on that side).</p>"
                + f"<figure>{_img(grid.read_bytes(), f'{method} edit grid')}"
                + _grid_caption(method, details.get("grids", {}).get(method, {}))
                + "</figure>"
            )
        mine = [row for row in curves if row.get("method") == method]
        if mine:
            clean: dict[str, list[tuple[float, float]]] = {}
            broken: dict[str, list[tuple[float, float]]] = {}
            for row in mine:
                clean.setdefault(row["direction"], []).append((_float(row["scale"]), _float(row["clean_flip"])))
                broken.setdefault(row["direction"], []).append((_float(row["scale"]), _float(row["broken"])))
            budget = details.get("settings", {}).get("max_broken")
            page.parts.append(
                '<div class="charts">'
                + _img(line_chart(clean, f"{method}: clean flip", "signed scale", "rate"), "")
                + _img(line_chart(broken, f"{method}: broken (red: budget)", "signed scale", "rate", level=budget), "")
                + "</div>"
            )
    page.parts.append("</section>")


def _truth(side: Mapping[str, Any]) -> str:
    """The world factor a side moves most, with its mean |change| in world standard deviations (ToyFaces)."""
    label = side.get("truth_label")
    if not label:
        return "–"
    return f"{label} {side['truth'][label]:.2f} sd"


def _grid_caption(method: str, labels: Mapping[str, Any]) -> str:
    """The labels drawn on a grid, as text: rows top to bottom, columns left to right."""
    if not labels:
        return ""
    rows = ", ".join(labels.get("rows", []))
    columns = ", ".join(labels.get("columns", []))
    return (
        f'<figcaption id="grid-{html.escape(method)}">Rows, top to bottom: {html.escape(rows)}. '
        f"Columns, left to right: {html.escape(columns)}.</figcaption>"
    )


def _preview_section(page: _Page) -> None:
    folder = page.root / PREVIEW
    grids = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not grids:
        return
    page.parts.append(
        "<section id=preview><h2>Preview grids</h2><p>The preview stage's grids (other held-out seeds, the "
        "same judge).</p>"
        + "".join(f"<h3>{html.escape(path.stem)}</h3>{_img(path.read_bytes(), path.stem)}" for path in grids)
        + "</section>"
    )


def _edit_section(page: _Page) -> None:
    """The edit stage's grid of the user's own images, with its per-direction and per-scale summary."""
    grid, details = page.root / EDIT_GRID, page.root / EDIT_DETAILS
    if not grid.is_file() or not details.is_file():
        return
    summary = json.loads(details.read_text())
    mse = summary.get("reconstruction_mse", {})
    columns = ["images", "changed_any", "broken", "eligible", "flipped", "clean_flip"]
    rows = [[row["direction"], row["scale"], *(row.get(column) for column in columns)] for row in summary["summary"]]
    inversion = summary.get("inversion", {})
    page.parts.append(
        "<section id=edit><h2>Edits of your own images</h2><p>"
        f"{html.escape(str(summary['directions']['method']))} directions applied to the inputs after "
        f"{html.escape(str(inversion.get('method')))} inversion ({html.escape(_cell(inversion.get('steps')))} steps; "
        f"reconstruction MSE mean {html.escape(_cell(mse.get('mean')))}, max {html.escape(_cell(mse.get('max')))}), "
        "judged against each image's reconstruction.</p>"
        + _table(["direction", "scale", *(c.replace("_", " ") for c in columns)], rows, "edit")
        + _img(grid.read_bytes(), "edits of your own images")
        + "</section>"
    )


def _spectra_section(page: _Page) -> None:
    charts = []
    for name, x, columns, split, title in SPECTRA:
        path = page.path(name)
        if path is None:
            continue
        rows = read_csv(path)
        if not rows:
            page.notes.append(f"{name} has no rows: skipped")
            continue
        names = [c for c in rows[0] if any(c == p or (p.endswith("*") and c.startswith(p[:-1])) for p in columns)]
        series: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            for column in names:
                key = f"{split}={_cell(row[split])}" if split else column
                series.setdefault(key, []).append((_float(row[x]), _float(row[column])))
        charts.append(_img(line_chart(series, title, x), title))
    if charts:
        page.parts.append(
            '<section id=spectra><h2>Spectra</h2><div class="charts">' + "".join(charts) + "</div></section>"
        )


def _metrics_section(page: _Page) -> None:
    folder = page.root / "metrics"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        page.notes.append("metrics/*.json not found: skipped")
        return
    page.parts.append("<section id=metrics><h2>Metrics</h2>")
    for path in files:
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError:
            page.notes.append(f"metrics/{path.name} is not valid JSON: skipped")
            continue
        flat = flatten(values) if isinstance(values, Mapping) else {"value": values}
        page.parts.append(
            f"<details><summary>metrics/{html.escape(path.name)} ({len(flat)} values)</summary>"
            + _table(["key", "value"], list(flat.items()))
            + "</details>"
        )
    page.parts.append("</section>")


def _config_section(page: _Page) -> None:
    path = page.path(PARAMS_FILE)
    if path is not None:
        page.parts.append(
            f"<section id=config><h2>Config (params.yaml)</h2><pre>{html.escape(path.read_text())}</pre></section>"
        )
