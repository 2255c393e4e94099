"""The registry of direction methods: every directions file the study writes, the stage that writes it, its
space, and how the other stages use it. Code and tests read this one list (``conf/evaluate`` lists the
evaluated methods by name, checked against it by the tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One directions file ``directions/<name>.safetensors`` (:func:`pipeline.io.artefacts.directions_path`).

    Attributes:
        name: the method name, also the file name and the ``method`` metadata of the file.
        stage: the DVC stage that writes it.
        space: "h" (per-step h-space directions), "x_t" (a noisy sample's space) or "x_T" (the initial noise).
        targets: its directions are named after the attribute each one targets (supervised methods).
        evaluated: scored by ``evaluate`` by default (local pullback bases are not: they belong to other
            samples' x_t, and their chordal mean ``pullback_global`` stands for them).
    """

    name: str
    stage: str
    space: str
    targets: bool = False
    evaluated: bool = True


REGISTRY: dict[str, Method] = {
    method.name: method
    for method in (
        Method("pca_per_step", "pca", "h"),
        Method("pca_all_steps", "pca", "h"),
        Method("supervised", "supervised", "h", targets=True),
        Method("supervised_conditional", "supervised", "h", targets=True),
        Method("noise_supervised", "supervised", "x_T", targets=True),
        Method("jacobian", "jacobian", "h"),
        Method("pullback", "pullback", "x_t", evaluated=False),
        Method("pullback_global", "pullback", "x_t"),
    )
}

METHODS = tuple(REGISTRY)
"""Method names a directions file may carry, in the order of the study."""

TARGETED_METHODS = tuple(name for name, method in REGISTRY.items() if method.targets)
"""Files whose direction names are their target attributes."""

EVALUATED_METHODS = tuple(name for name, method in REGISTRY.items() if method.evaluated)
"""The default of ``evaluate.methods``."""


def written_by(*stages: str) -> tuple[str, ...]:
    """Names of the methods whose files the given stages write, in registry order."""
    return tuple(name for name, method in REGISTRY.items() if method.stage in stages)
