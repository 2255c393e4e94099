"""What a computing step hands its stage to write: directions files, plot rows, metrics, pictures, timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.directions.format import Directions


@dataclass
class StepResult:
    """Directions files by method, rows of DVC plots by name, the metrics (a short headline: what ``dvc metrics
    show`` compares), pictures by name, ``timings`` (seconds, units resumed; logged but kept out of the metrics so
    that outputs are reproducible) and ``details`` (every analysis figure, written next to the plots; empty when
    the metrics hold them all)."""

    directions: dict[str, Directions]
    plots: dict[str, list[dict[str, float]]]
    metrics: dict[str, Any]
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
