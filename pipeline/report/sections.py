"""The sections of the report, in page order; each appends its HTML to the page, and a section whose inputs are
absent is left out (the inputs the page must have are noted as missing by :meth:`Page.path`).

Inputs: the evaluation summary, method table, curves, details and grids (``evaluate``, ``evaluate_summary``), the
supervised study's tables, the preview grids, the edits of the user's images, the spectra, every metrics file and
the params; their paths are in :mod:`pipeline.io.artefacts`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

from pipeline.io import artefacts
from pipeline.io.params import DEFAULT_PARAMS
from pipeline.io.tracking import flatten
from pipeline.report.charts import line_chart
from pipeline.report.page import Page, as_float, cell, img, is_number, load_json, read_csv, table

SPECTRA = (
    # file, x column, y columns (a trailing * matches a prefix), column splitting rows into series, title
    (artefacts.PCA_SPECTRUM, "component", ["all_steps", "per_step_mean"], None, "PCA: explained variance ratio"),
    (artefacts.JACOBIAN_SPECTRUM, "step", ["sigma_*"], None, "Jacobian: singular values per step"),
    (artefacts.PULLBACK_SPECTRUM, "index", ["sigma"], "t", "Pullback: singular values (one line per t)"),
    (artefacts.PULLBACK_PSD, "t", ["mean_frequency"], None, "Pullback: mean spatial frequency of the basis"),
)
"""The spectra charts, in page order."""


def load_details(page: Page, evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """{"settings": the first method's, "methods": method -> its directions' entries, "grids": method -> the
    row and column labels drawn on its grid} from every evaluated method's details file (methods in the order
    of the method table, else of the evaluation summary ``evaluation``); None when no details file is there."""
    method_table = page.root / artefacts.EVALUATE_METHODS
    methods = list((evaluation or {}).get("methods", {}))
    if method_table.is_file():
        methods = [row["method"] for row in read_csv(method_table)]
    loaded = {method: load_json(page, artefacts.evaluation_details(method)) for method in methods}
    present = {method: entry for method, entry in loaded.items() if entry is not None}
    if not present:
        return None
    return {
        "settings": next(iter(present.values())).get("settings", {}),
        "methods": {method: entry.get("directions", []) for method, entry in present.items()},
        "grids": {method: entry.get("grid", {}) for method, entry in present.items()},
    }


def _rate(entry: Mapping[str, Any] | None) -> str:
    """A judge rate entry as "0.31 [0.17, 0.49] (n 16)"."""
    if not entry or entry.get("rate") is None:
        return "–"
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}] (n {entry['n']})"


def _mean(entry: Mapping[str, Any] | None) -> str:
    """A mean entry (MNAC) as "0.41 [0.30, 0.52] (n 120)"."""
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}] (n {entry['n']})"


def _dependency(side: Mapping[str, Any]) -> str:
    """The attribute dependency of a side as "0.12 (max 0.40 hat; target 2.1)"."""
    value = side.get("attribute_dependency") or {}
    if value.get("mean") is None:
        return "–"
    return f"{value['mean']:.2f} (max {value['max']:.2f} {value['max_attribute']}; target {value['target']:.2f})"


STATUS_WORDS = {
    "inside": "inside its curve",
    "edge": "at the curve's end",
    "no_flip": "no scale flips it",
    "infeasible": "every scale breaks",
}
"""How the report words each side's status (:data:`pipeline.evaluation.protocol.STATUSES`)."""


def _status(side: Mapping[str, Any]) -> str:
    return STATUS_WORDS.get(side.get("status", ""), "–")


def _sides(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """A direction's sides, the positive one (up, plus) first."""
    return sorted(entry["sides"].items(), key=lambda item: item[0] not in ("up", "plus"))


def _worst_off_target(side: Mapping[str, Any]) -> str:
    rates = {name: value.get("rate") or 0.0 for name, value in side.get("off_target", {}).items()}
    if not rates or max(rates.values()) == 0:
        return "–"
    name = max(rates, key=lambda key: rates[key])
    return f"{name} {rates[name]:.2f}"


def methods_section(page: Page, evaluation: Mapping[str, Any] | None, details: Mapping[str, Any] | None) -> None:
    """The method comparison at operating scales: how edits are judged (from the evaluation summary and the
    details' settings) and the method table."""
    path = page.path(artefacts.EVALUATE_METHODS)
    page.parts.append("<section id=comparison><h2>Methods at operating scales</h2>")
    if evaluation is not None:
        settings = (details or {}).get("settings", {})
        check = settings.get("broken_check", {})
        page.parts.append(
            "<p>Every direction is edited with each sign separately. Its operating point is chosen on "
            f"{html.escape(cell(evaluation.get('choose_samples')))} held-out samples (untargeted files: the first "
            f"{html.escape(cell(evaluation.get('untargeted_choose_samples')))}), edited at every scale of a curve "
            "that is extended while its best point lies at an end; every figure below is then read at that scale "
            f"on {html.escape(cell(evaluation.get('num_samples')))} other held-out samples (untargeted files: the "
            f"first {html.escape(cell(evaluation.get('untargeted_samples')))}), which took no part in the choice. "
            "Per sample the classifier decides every "
            "attribute before and after: a <b>flip</b> turns the target to the other side, a <b>clean flip</b> "
            "does so while no other attribute changes and the image is not broken. An image is <b>broken</b> when "
            f"the {html.escape(cell(check.get('detector')))} check rejects it (threshold "
            f"{html.escape(cell(check.get('threshold')))}, calibrated on "
            f"{html.escape(cell(check.get('calibration_samples')))} unedited samples; "
            f"{html.escape(cell(evaluation.get('unedited_broken')))} of the unedited held-out samples are flagged). "
            "Each side's operating scale has the highest clean-flip rate with at most "
            f"{html.escape(cell(settings.get('max_broken')))} broken. Rates are over eligible samples (those "
            "that start on the near side), with Wilson 95% intervals in the tables below; untargeted directions "
            "are labelled, on the choosing samples, with the attribute they flip most cleanly. MNAC is the mean "
            "number of other attributes whose decision changed per eligible, unbroken sample; the attribute "
            "dependency the mean |logit change| of the other attributes in units of each logit's spread over "
            "unedited samples, beside its largest and the target's own change.</p>"
        )
    if path is not None:
        rows = read_csv(path)
        if rows:
            header = list(rows[0])
            page.parts.append(table(header, [[row[c] for c in header] for row in rows], "methods"))
    page.parts.append("</section>")


def supervised_section(page: Page, details: Mapping[str, Any] | None) -> None:
    """The supervised directions, one row per attribute and side: rates with intervals at the operating scale."""
    judged = (details or {}).get("methods", {}).get("supervised")
    if not judged:
        return
    rows = []
    for entry in judged:
        for side, values in _sides(entry):
            rows.append([
                entry["name"], side, values["scale"], _status(values), _rate(values["flip"]),
                _rate(values["clean_flip"]), _rate(values["broken"]), _worst_off_target(values),
                _mean(values.get("attributes_changed")), _dependency(values),
                _rate(values.get("stop_at_flip", {}).get("clean_flip")),
            ])  # fmt: skip
    header = [
        "attribute", "side", "operating scale", "status", "flip", "clean flip", "broken", "worst off-target flip",
        "MNAC", "attribute dependency", "clean flip, each sample stopped at its first flip (choosing samples)",
    ]  # fmt: skip
    page.parts.append(
        "<section id=supervised><h2>Supervised directions, per attribute and side</h2>"
        + table(header, rows, "supervised")
        + "</section>"
    )


def conditional_section(page: Page, evaluation: Mapping[str, Any] | None) -> None:
    """Conditional against plain supervised directions, per target and side (from the evaluation summary)."""
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
        + table(["target", "side", *(c.replace("_", " ") for c in columns)], rows, "conditional")
        + "</section>"
    )


def supervised_study_section(page: Page) -> None:
    """The supervised study: its arms' table, and the few-samples table with its chart (log10 samples per side
    against clean-flip rates and cosine to the direction from every sample)."""
    variants, samples = page.path(artefacts.STUDY_VARIANTS), page.path(artefacts.STUDY_SAMPLES)
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
        page.parts.append(table(header, [[row[c] for c in header] for row in rows], "supervised-study"))
    curve = read_csv(samples) if samples is not None else []
    if curve:
        header = list(curve[0])
        page.parts.append(
            "<h3>How many labelled samples a direction needs</h3><p>The default estimator from N random samples "
            "per side of each attribute (all: every labelled sample).</p>"
            + table(header, [[row[c] for c in header] for row in curve], "few-samples")
        )
        numeric = [row for row in curve if is_number(row["samples_per_side"])]
        series = {
            name: [(math.log10(as_float(row["samples_per_side"])), as_float(row[name])) for row in numeric]
            for name in ("mean_clean_flip", "min_clean_flip", "mean_cosine_to_all")
        }
        page.parts.append(
            '<div class="charts">'
            + img(line_chart(series, "few samples", "log10 samples per side", "rate / cosine"), "")
            + "</div>"
        )
    page.parts.append("</section>")


def per_method_section(page: Page, details: Mapping[str, Any] | None) -> None:
    """Per method (in the method table's order): its directions' judged sides, its labelled edit grid with the
    grid's labels as a caption, and its clean-flip and broken curves against the signed scale."""
    if not details:
        return
    curves_path = page.path(artefacts.EVALUATE_CURVES)
    curves = read_csv(curves_path) if curves_path is not None else []
    page.parts.append("<section id=directions><h2>Directions, method by method</h2>")
    methods = details.get("methods", {})
    table_path = page.root / artefacts.EVALUATE_METHODS
    order = [row["method"] for row in read_csv(table_path)] if table_path.is_file() else []
    for method in sorted(methods, key=lambda name: order.index(name) if name in order else len(order)):
        page.parts.append(f'<h3 id="method-{html.escape(method)}">{html.escape(method)}</h3>')
        rows = []
        for entry in methods[method]:
            for side, values in _sides(entry):
                rows.append([
                    entry["name"], side, f"{values['target']} {values['towards']}", values["scale"],
                    _status(values), _rate(values["flip"]), _rate(values["clean_flip"]), _rate(values["broken"]),
                    _worst_off_target(values), _mean(values.get("attributes_changed")), _dependency(values),
                    values.get("distortion"), _truth(values),
                ])  # fmt: skip
        header = ["direction", "side", "target", "operating scale", "status", "flip", "clean flip", "broken",
                  "worst off-target flip", "MNAC", "attribute dependency", "1 - SSIM",
                  "true factor moved most"]  # fmt: skip
        page.parts.append(table(header, rows, f"table-{method}"))
        grid = page.path(artefacts.evaluation_grid(method))
        if grid is not None:
            page.parts.append(
                "<p>Rows: direction · held-out sample, in the table's order; columns: signed scale (0: unedited). "
                "Frames: the judge's verdict against each side's target (green clean flip, orange flip with an "
                "off-target change, grey no flip, red broken; none: the sample was already on that side).</p>"
                + f"<figure>{img(grid.read_bytes(), f'{method} edit grid')}"
                + _grid_caption(method, details.get("grids", {}).get(method, {}))
                + "</figure>"
            )
        mine = [row for row in curves if row.get("method") == method]
        if mine:
            clean: dict[str, list[tuple[float, float]]] = {}
            broken: dict[str, list[tuple[float, float]]] = {}
            for row in mine:
                clean.setdefault(row["direction"], []).append((as_float(row["scale"]), as_float(row["clean_flip"])))
                broken.setdefault(row["direction"], []).append((as_float(row["scale"]), as_float(row["broken"])))
            budget = details.get("settings", {}).get("max_broken")
            page.parts.append(
                '<div class="charts">'
                + img(line_chart(clean, f"{method}: clean flip", "signed scale", "rate"), "")
                + img(line_chart(broken, f"{method}: broken (red: budget)", "signed scale", "rate", level=budget), "")
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


def preview_section(page: Page) -> None:
    """The preview stages' grids, one per method (each ``preview@<method>`` writes ``plots/preview/<method>/``)."""
    folder = page.root / artefacts.PREVIEWS
    methods = sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    grids = {method: page.root / artefacts.preview_grid(method) for method in methods}
    grids = {method: path for method, path in grids.items() if path.is_file()}
    if not grids:
        return
    page.parts.append(
        "<section id=preview><h2>Preview grids</h2><p>The preview stage's grids (other held-out seeds, the "
        "same judge).</p>"
        + "".join(f"<h3>{html.escape(method)}</h3>{img(path.read_bytes(), method)}" for method, path in grids.items())
        + "</section>"
    )


def edit_section(page: Page) -> None:
    """The edit stage's grid of the user's own images, with its per-direction and per-scale summary."""
    grid, details = page.root / artefacts.EDIT_GRID, page.root / artefacts.EDIT_DETAILS
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
        f"{html.escape(str(inversion.get('method')))} inversion ({html.escape(cell(inversion.get('steps')))} steps; "
        f"reconstruction MSE mean {html.escape(cell(mse.get('mean')))}, max {html.escape(cell(mse.get('max')))}), "
        "judged against each image's reconstruction.</p>"
        + table(["direction", "scale", *(c.replace("_", " ") for c in columns)], rows, "edit")
        + img(grid.read_bytes(), "edits of your own images")
        + "</section>"
    )


def spectra_section(page: Page) -> None:
    """The spectra of :data:`SPECTRA` as line charts (missing or empty files noted)."""
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
                key = f"{split}={cell(row[split])}" if split else column
                series.setdefault(key, []).append((as_float(row[x]), as_float(row[column])))
        charts.append(img(line_chart(series, title, x), title))
    if charts:
        page.parts.append(
            '<section id=spectra><h2>Spectra</h2><div class="charts">' + "".join(charts) + "</div></section>"
        )


def metrics_section(page: Page) -> None:
    """Every stage's metrics file, each a collapsed table of its flattened keys (unreadable files noted)."""
    folder = page.root / artefacts.METRICS_FOLDER
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        page.notes.append(f"{artefacts.METRICS_FOLDER}/*.json not found: skipped")
        return
    page.parts.append("<section id=metrics><h2>Metrics</h2>")
    for path in files:
        name = f"{artefacts.METRICS_FOLDER}/{path.name}"
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError:
            page.notes.append(f"{name} is not valid JSON: skipped")
            continue
        flat = flatten(values) if isinstance(values, Mapping) else {"value": values}
        page.parts.append(
            f"<details><summary>{html.escape(name)} ({len(flat)} values)</summary>"
            + table(["key", "value"], list(flat.items()))
            + "</details>"
        )
    page.parts.append("</section>")


def config_section(page: Page) -> None:
    """The params file the study ran with, verbatim."""
    path = page.path(str(DEFAULT_PARAMS))
    if path is not None:
        page.parts.append(
            f"<section id=config><h2>Config (params.yaml)</h2><pre>{html.escape(path.read_text())}</pre></section>"
        )
