"""Step ``evaluate_summary``: the per-method evaluations (:mod:`pipeline.steps.evaluate`) gathered into the
headline metrics (what ``dvc metrics show`` and ``dvc exp show`` compare), the full summary, the method table and
the curves, and the conditional directions compared with their plain ones sample by sample, all recomputed from
the per-sample records (:mod:`pipeline.evaluation.records`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.directions.methods import TARGETED_METHODS
from pipeline.evaluation.judge import Rate
from pipeline.evaluation.protocol import DirectionResult
from pipeline.evaluation.records import MethodRecords
from pipeline.evaluation.summary import conditional_comparison, method_summary, targeted_summary
from pipeline.steps.evaluate import EvaluateConfig

PARAMS = ("evaluate",)
"""The params this step reads (its stage's ``params`` in dvc.yaml): which methods, and how sides are judged."""


HEADLINE = ("mean_clean_flip", "min_clean_flip", "mean_broken")
"""The figures of each method that the metrics file keeps (the full summary has every one)."""


@dataclass
class Summary:
    """What the summary stage writes: the headline ``metrics`` (per method :data:`HEADLINE`, the sample count and
    the unedited broken rate), the full summary ``details`` (every figure of every method, the supervised
    per-attribute rates, the conditional comparison), the method table rows and the curve rows."""

    metrics: dict[str, Any]
    details: dict[str, Any]
    method_rows: list[dict[str, Any]]
    curve_rows: list[dict[str, Any]]


def run(records: Mapping[str, MethodRecords], cfg: EvaluateConfig) -> Summary:
    """Summarise the records of every method of ``cfg.methods`` (method -> records, in that order)."""
    results = {method: records[method].judge(cfg) for method in cfg.methods}
    summaries = {method: method_summary(judged) for method, judged in results.items()}
    targeted = [method for method in cfg.methods if method in TARGETED_METHODS] or list(cfg.methods)
    unedited = records[targeted[0]].baseline_broken
    details: dict[str, Any] = {
        "choose_samples": cfg.choose_samples,
        "num_samples": cfg.num_samples,
        "untargeted_choose_samples": cfg.untargeted_choose_samples,
        "untargeted_samples": cfg.untargeted_samples,
        "unedited_broken": Rate.of(unedited, torch.ones_like(unedited)).value,
        "methods": summaries,
    }
    if "supervised" in results:
        details["supervised"] = targeted_summary(results["supervised"])
    conditional = _conditional(records, results)
    if conditional:
        details["conditional"] = conditional
    metrics = {
        "num_samples": details["num_samples"],
        "unedited_broken": details["unedited_broken"],
        "methods": {method: {key: summary[key] for key in HEADLINE} for method, summary in summaries.items()},
    }
    rows = [{"method": method, "directions": len(results[method]), **summaries[method]} for method in results]
    return Summary(metrics, details, rows, curve_rows(results))


def _conditional(
    records: Mapping[str, MethodRecords], results: Mapping[str, Mapping[str, DirectionResult]]
) -> dict[str, Any]:
    """Conditional against plain directions (:func:`conditional_comparison`) for every conditional file whose
    source file was evaluated too."""
    comparison: dict[str, Any] = {}
    for method, record in records.items():
        source = record.compare.get("source_method")
        if method not in results or source not in results:
            continue
        for name, partners in record.compare.get("partners", {}).items():
            if name in results[method] and name in results[source]:
                comparison[name] = conditional_comparison(
                    results[source][name], results[method][name], list(partners), record.names
                )
    return comparison


def curve_rows(results: Mapping[str, Mapping[str, DirectionResult]]) -> list[dict[str, Any]]:
    """One row per (method, direction, side, scale): the curve's rates, and whether it is the operating scale."""
    rows = []
    for method, judged in results.items():
        for name, result in judged.items():
            for side, side_result in result.sides.items():
                entry = side_result.entry()
                for point in entry["curve"]:
                    scale = side_result.edits.sign * point["scale"]
                    rows.append({
                        "method": method, "direction": name, "side": side,
                        "target": f"{entry['target']} {entry['towards']}", "scale": scale,
                        **{key: point[key] for key in ("flip", "clean_flip", "broken", "distortion")},
                        "operating": int(scale == entry["scale"]),
                    })  # fmt: skip
    return rows
