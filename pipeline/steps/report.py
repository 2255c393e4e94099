"""Step ``report``: the study report, one self-contained HTML page (``report/index.html``) built from the
pipeline's outputs.

Every input is optional; a missing one is named in a note on the page instead of failing:

- ``plots/evaluate_summary.json`` and ``plots/evaluate_methods.csv``: the method comparison at operating scales and
  the conditional check; ``plots/evaluate/<method>/judge.json``: every direction's judged sides (tables, with
  intervals);
- ``plots/evaluate/<method>/grid.png``: labelled edit grids; ``plots/evaluate_curves.csv``: clean-flip and broken
  curves; ``plots/preview/<method>/grid.png``: the preview grids; ``plots/edit/``: the edits of the user's images;
- ``plots/pca_spectrum.csv``, ``plots/jacobian_spectrum.csv``, ``plots/pullback_spectrum.csv``,
  ``plots/pullback_psd.csv``: spectra; ``metrics/*.json``: every stage's metrics; ``params.yaml``: the config.

Images are embedded as base64 PNG data URIs (the page needs no other file), and charts are drawn with
PIL (:func:`pipeline.report.charts.line_chart`), so the report adds no plotting dependency. The sections are in
:mod:`pipeline.report.sections`, the page's building blocks in :mod:`pipeline.report.page`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.io import artefacts
from pipeline.io.files import atomic_path
from pipeline.report import sections
from pipeline.report.page import Page, load_json

PARAMS: tuple[str, ...] = ()
"""The params this step reads: none (its stage depends on params.yaml as a file, shown on the page)."""


def build_report(root: str | Path = ".", title: str = "h-space directions: study report") -> str:
    """The report page (HTML text) of the study whose outputs lie under ``root``, its sections in page order."""
    page = Page(Path(root))
    evaluation = load_json(page, artefacts.EVALUATE_SUMMARY)
    details = sections.load_details(page, evaluation)
    sections.methods_section(page, evaluation, details)
    sections.supervised_section(page, details)
    sections.conditional_section(page, evaluation)
    sections.supervised_study_section(page)
    sections.per_method_section(page, details)
    sections.preview_section(page)
    sections.edit_section(page)
    sections.spectra_section(page)
    sections.metrics_section(page)
    sections.config_section(page)
    return page.render(title)


def write_report(path: str | Path, text: str) -> None:
    """Write the page atomically."""
    with atomic_path(path, ".html") as tmp:
        tmp.write_text(text, encoding="utf-8")
