"""The per-sample records of one directions file's evaluation: one safetensors file holding what every edit did
to every sample (decisions before and after, broken verdicts, image change, factor change), from which every
judged figure is recomputed by :func:`pipeline.evaluation.protocol.judge_sides`.

The per-method ``evaluate`` stages write them (at :func:`pipeline.io.artefacts.records_path`); the
``evaluate_summary`` stage reads all of them, so summaries that compare files sample by sample (conditional
against plain directions) need no decode of their own.

Layout: tensors ``before`` [M, A] uint8, ``before_logits`` [M, A] float32, ``baseline_broken`` [M] uint8 and,
for direction i and side s, ``{i}/{s}/decoded`` [S, M] uint8, ``{i}/{s}/after`` [S, M, A] uint8,
``{i}/{s}/logits`` [S, M, A] float32, ``{i}/{s}/broken`` [S, M] uint8, ``{i}/{s}/change`` [S, M] float32 and, on
ToyFaces, ``{i}/{s}/factor_change`` [S, M, F] float32; metadata ``format`` (:data:`RECORDS_FORMAT`) and
``records`` (JSON: method, attribute and factor names, ``choose`` (how many of the first samples chose the
operating points; the others report them), per direction its name, target and each side's sign and scales, and
the comparison a conditional file asks for).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.evaluation.protocol import DirectionResult, ProtocolConfig, SideEdits, Unedited, judge_sides
from pipeline.evaluation.readout import Reading
from pipeline.io.errors import ConfigError
from pipeline.io.files import load_tensors, save_tensors

RECORDS_FORMAT = "hspace-directions/evaluation-records/2"
"""The ``format`` metadata of a records file (name and version)."""


@dataclass
class MethodRecords:
    """The records of one file: attribute ``names`` [A], ``factor_names`` [F] (empty without factors), the
    unedited readings ``unedited`` (decisions, logits, how many samples chose), the unedited broken verdicts
    ``baseline_broken`` [M] bool, and per
    direction (name, target attribute or None, side -> :class:`SideEdits` without tiles); ``compare`` is the
    comparison a conditional file asks for ({"source_method", "partners": target -> projected-out attributes})
    or empty."""

    method: str
    names: list[str]
    factor_names: list[str]
    unedited: Unedited
    baseline_broken: torch.Tensor
    directions: list[tuple[str, str | None, dict[str, SideEdits]]]
    compare: dict[str, Any] = field(default_factory=dict)

    def judge(self, cfg: ProtocolConfig) -> dict[str, DirectionResult]:
        """Every direction judged again from its records (name -> result, in the file's order)."""
        results = {}
        for name, target, edits in self.directions:
            index = None if target is None else self.names.index(target)
            sides = judge_sides(edits, self.unedited, index, cfg, self.names, self.factor_names)
            results[name] = DirectionResult(name, target, sides)
        return results


def save_records(
    path: str | Path, method: str, results: Mapping[str, DirectionResult], baseline: Reading, names: list[str],
    factor_names: list[str], compare: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write the records of ``results`` (one file's judged directions, sharing one split into choosing and
    reported samples), their unedited ``baseline`` and the comparison the file asks for
    (:attr:`MethodRecords.compare`)."""
    splits = {side.unedited.choose for result in results.values() for side in result.sides.values()}
    if baseline.logits is None or len(splits) != 1:
        raise ConfigError(f"save_records: needs the unedited logits and one split (got choose {sorted(splits)})")
    tensors = {
        "before": baseline.decisions.to(torch.uint8), "before_logits": baseline.logits.float(),
        "baseline_broken": baseline.broken.to(torch.uint8),
    }  # fmt: skip
    described = []
    for i, result in enumerate(results.values()):
        sides = {}
        for side, side_result in result.sides.items():
            edits = side_result.edits
            tensors[f"{i}/{side}/decoded"] = edits.decoded.to(torch.uint8)
            tensors[f"{i}/{side}/after"] = edits.after.to(torch.uint8)
            tensors[f"{i}/{side}/logits"] = edits.logits.float()
            tensors[f"{i}/{side}/broken"] = edits.broken.to(torch.uint8)
            tensors[f"{i}/{side}/change"] = edits.change.float()
            if edits.factor_change is not None:
                tensors[f"{i}/{side}/factor_change"] = edits.factor_change.float()
            sides[side] = {"sign": edits.sign, "scales": edits.scales}
        described.append({"name": result.name, "target": result.target, "sides": sides})
    header = {
        "method": method, "names": names, "factor_names": factor_names, "choose": splits.pop(), "directions": described,
        "compare": dict(compare or {}),
    }  # fmt: skip
    save_tensors(path, tensors, {"format": RECORDS_FORMAT, "records": json.dumps(header, sort_keys=True)})


def load_records(path: str | Path) -> MethodRecords:
    """Read a records file; a missing, unreadable or foreign file is a one-line ConfigError."""
    tensors, metadata = load_tensors(path, "evaluation records", missing_hint=" (run: dvc repro evaluate)")
    if metadata.get("format") != RECORDS_FORMAT:
        raise ConfigError(f"evaluation records '{path}': format {metadata.get('format')!r}, expected {RECORDS_FORMAT}")
    header = json.loads(metadata["records"])
    directions = []
    for i, entry in enumerate(header["directions"]):
        edits = {}
        for side, values in entry["sides"].items():
            edits[side] = SideEdits(
                values["sign"], [float(s) for s in values["scales"]], tensors[f"{i}/{side}/decoded"].bool(),
                tensors[f"{i}/{side}/after"].bool(), tensors[f"{i}/{side}/logits"],
                tensors[f"{i}/{side}/broken"].bool(), tensors[f"{i}/{side}/change"],
                tensors.get(f"{i}/{side}/factor_change"), torch.empty(len(values["scales"]), 0),
            )  # fmt: skip
        directions.append((entry["name"], entry["target"], edits))
    unedited = Unedited(tensors["before"].bool(), tensors["before_logits"], int(header["choose"]))
    return MethodRecords(
        header["method"], header["names"], header["factor_names"], unedited, tensors["baseline_broken"].bool(),
        directions, header.get("compare", {}),
    )  # fmt: skip
