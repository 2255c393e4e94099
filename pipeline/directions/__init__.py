"""Semantic directions: one module per discovery method, each a function from tensors to a
:class:`~pipeline.directions.format.Directions` object, and the one file format they all share."""

from pipeline.directions.format import (
    METHODS,
    SPACES,
    Directions,
    Expected,
    Origin,
    check_expected,
    load_directions,
    require_directions_file,
    save_directions,
)

__all__ = [
    "METHODS",
    "SPACES",
    "Directions",
    "Expected",
    "Origin",
    "check_expected",
    "load_directions",
    "require_directions_file",
    "save_directions",
]
