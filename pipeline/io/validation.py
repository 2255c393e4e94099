"""Checks shared by every config section and library entry point; each failure is a one-line ConfigError."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from pipeline.io.errors import ConfigError


def require(condition: bool, key: str, value: object, rule: str) -> None:
    """Raise a one-line :class:`ConfigError` naming the params ``key``, its ``value`` and the ``rule`` it breaks."""
    if not condition:
        raise ConfigError(f"params: {key}={value!r}: {rule}")


def as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer (int, NumPy or 0-d integer tensor; not bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def first_difference(found: Any, expected: Any, prefix: str = "") -> str | None:
    """The dotted key path of the first place where two nested mappings differ (keys in sorted order; a key
    present in only one of them counts), "<root>" when two non-mappings differ, or None when they are equal."""
    if isinstance(found, Mapping) and isinstance(expected, Mapping):
        for key in sorted(set(found) | set(expected), key=str):
            name = f"{prefix}{key}"
            if key not in found or key not in expected:
                return name
            difference = first_difference(found[key], expected[key], f"{name}.")
            if difference is not None:
                return difference
        return None
    return None if found == expected else prefix.rstrip(".") or "<root>"
