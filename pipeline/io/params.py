"""Reading and validating ``params.yaml`` sections against dataclass schemas; composing it from ``conf/``.

Stages read only ``params.yaml`` (what DVC tracks); ``conf/`` is the Hydra tree it is composed from
(``dvc exp run`` does that, or ``python -m pipeline.io.params``). The default option of each ``conf/`` group is
generated from its sections' dataclasses (:func:`conf_text`, ``python -m pipeline.io.params --write-conf``), so
each default is stated once, in its dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.io.errors import ConfigError, run_main

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")
CONF_COMMAND = "python -m pipeline.io.params --write-conf"
"""The command that regenerates ``conf/``'s default options from the dataclasses (and params.yaml from conf/)."""
_MISSING = object()
_REFUSED_OVERRIDE = re.compile(r"Could not override '([^']+)'")
"""Hydra's message for an override of a key the composed config does not have (it suggests ``+key``)."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> DictConfig:
    """Load the whole params file; a missing or unparsable file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file '{path}' not found (compose it with: python -m pipeline.io.params)")
    try:
        params = OmegaConf.load(path)
    except Exception as error:  # yaml errors carry multi-line context
        raise ConfigError(f"params file '{path}': not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(params, DictConfig):
        raise ConfigError(f"params file '{path}': expected a mapping at the top level")
    return params


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The hint for an unknown key ``name``: "did you mean 'x'?" with the closest of ``known`` (difflib), or the
    list of known keys when none is close."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"expected one of {', '.join(known)}" if known else "this level takes no keys"


def unknown_key(full_key: str, known: Iterable[str]) -> ConfigError:
    """The one-line error of an unknown params key ``full_key`` (dotted) among the ``known`` keys of its level."""
    return ConfigError(f"params: {full_key}: unknown key; {did_you_mean(full_key.rpartition('.')[2], known)}")


def schema_fields(schema: type, path: Sequence[str] = ()) -> list[str]:
    """The field names of the dataclass ``schema`` at the nested ``path`` (field names, following dataclass-typed
    and optional dataclass-typed fields), or [] where the path leaves the dataclasses."""
    for name in path:
        hint = typing.get_type_hints(schema).get(name) if dataclasses.is_dataclass(schema) else None
        schema = next((arg for arg in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(arg)), None)
    return [field.name for field in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []


def validate(section: Any, schema: type[T], key: str) -> T:
    """Merge ``section`` (a mapping) onto ``schema``'s defaults and return the typed object.

    Unknown keys and values of the wrong type raise ConfigError with one line naming the full key; an unknown
    key gets the closest field name of its level ("did you mean").
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section if section is not None else {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        full_key = f"{key}.{error.full_key}" if error.full_key else key
        if isinstance(error, ConfigKeyError) and error.full_key and str(error).startswith("Key '"):
            raise unknown_key(full_key, schema_fields(schema, str(error.full_key).split(".")[:-1])) from error
        message = str(error).splitlines()[0]
        raise ConfigError(f"params: {full_key}: {message}") from error


def load_section(key: str, schema: type[T], params: DictConfig | None = None) -> T:
    """The validated section ``key`` (dotted for a subsection, "directions.pca") of ``params`` (loaded from
    ``params.yaml`` when not given)."""
    params = load_params() if params is None else params
    section = OmegaConf.select(params, key, default=_MISSING)
    if section is _MISSING:
        raise ConfigError(f"params: section '{key}' is missing")
    return validate(section, schema, key)


def load_value(key: str, expected: type, params: DictConfig | None = None) -> Any:
    """A top-level scalar of ``params`` (for example ``device``), checked against ``expected``."""
    params = load_params() if params is None else params
    if key not in params:
        raise ConfigError(f"params: key '{key}' is missing")
    value = params[key]
    if not isinstance(value, expected):
        raise ConfigError(f"params: {key}={value!r}: expected {expected.__name__}")
    return value


def check_params(params: DictConfig, schemas: Mapping[str, type]) -> None:
    """Validate every section of ``params`` against its schema in ``schemas`` (params key -> dataclass), and the
    ``device`` value, as the stages do: the first unknown key, wrong type or value out of range raises its
    one-line ConfigError."""
    for key, schema in schemas.items():
        load_section(key, schema, params)
    load_value("device", str, params)


RUNTIME_KEYS = ("device", "logging", "launch")
"""Keys every stage may read besides its declared params: where it runs and how it logs, never what it
computes, so DVC does not track them."""


class StageParams:
    """The params one stage reads: exactly its declared keys (its ``params`` in dvc.yaml), each validated
    against its schema, plus the runtime keys ``device``, ``logging`` and ``launch``.

    A declared key is a top-level section ("model"), a subsection ("directions.pca") or a value inside a
    section ("preview.scales", whose section's schema validates it). Asking for an undeclared key is an
    error, so a stage cannot depend on a param that DVC does not track.
    """

    def __init__(
        self, stage: str, declared: Sequence[str], schemas: Mapping[str, type], params: DictConfig | None = None
    ):
        self.stage = stage
        self.declared = tuple(declared)
        self.schemas = schemas
        self.params = load_params() if params is None else params
        for key in self.declared:
            if key not in schemas and key.rpartition(".")[0] not in schemas:
                raise ConfigError(f"stage {stage}: params key '{key}' has no schema")

    def __getitem__(self, key: str) -> Any:
        """The validated section (or value) ``key``; ConfigError if the stage does not declare it."""
        if key not in self.declared:
            raise ConfigError(f"stage {self.stage}: reads params key '{key}', which it does not declare")
        if key in self.schemas:
            return load_section(key, self.schemas[key], self.params)
        section, _, name = key.rpartition(".")
        return getattr(load_section(section, self.schemas[section], self.params), name)

    @property
    def tracked(self) -> dict[str, Any]:
        """The declared params as plain values, ``{key: value}``: the fingerprint of a resumable stage's work
        cache."""
        return {key: _plain(OmegaConf.select(self.params, key, throw_on_missing=True)) for key in self.declared}

    @property
    def device(self) -> str:
        """The ``device`` param as given ("auto", "cpu", "cuda", "cuda:1", ...)."""
        return load_value("device", str, self.params)

    def runtime(self, key: str, schema: type[T]) -> T:
        """A runtime section (``logging`` or ``launch``) validated against ``schema``."""
        if key not in RUNTIME_KEYS:
            raise ConfigError(f"stage {self.stage}: '{key}' is not a runtime key ({', '.join(RUNTIME_KEYS)})")
        return load_section(key, schema, self.params)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def compose(
    conf_dir: str | Path = "conf", config_name: str = "config", overrides: list[str] | None = None
) -> str:
    """Compose the Hydra tree as DVC does (compose, resolve, dump) and return the YAML text.

    An override Hydra refuses is a one-line ConfigError: an unknown key names the closest key of its level in
    the composed config ("did you mean", where Hydra would suggest appending it with ``+``), an unknown group
    option the closest option, and an override that does not parse its first line of explanation.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    overrides = list(overrides or [])
    try:
        cfg = _hydra_compose(conf_dir, config_name, overrides)
    except MissingConfigException as error:
        missing = str(error.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        if not group or not error.options:
            raise ConfigError(f"conf: {str(error).splitlines()[0]}") from error
        raise ConfigError(f"conf: {group}={option}: no such option; {did_you_mean(option, error.options)}") from error
    except OverrideParseException as error:
        raise ConfigError(f"conf: override not understood: {str(error).splitlines()[0]}") from error
    except ConfigCompositionException as error:
        refused = _REFUSED_OVERRIDE.match(str(error))
        full_key = refused.group(1) if refused else None
        rest = [item for item in overrides if item.split("=", 1)[0] != full_key]
        if full_key is None or len(rest) == len(overrides):
            raise ConfigError(f"conf: {str(error).splitlines()[0]}") from error
        raise _unknown_composed_key(full_key, _hydra_compose(conf_dir, config_name, rest)) from error
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def _hydra_compose(conf_dir: str | Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition of ``config_name`` in ``conf_dir`` with ``overrides`` (unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def _unknown_composed_key(full_key: str, cfg: DictConfig) -> ConfigError:
    """The error of ``full_key``, a dotted key absent from the composed ``cfg``: named down to its first missing
    part, with the closest key of that level."""
    node: Any = cfg
    parts = full_key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            known = [str(name) for name in node] if isinstance(node, DictConfig) else []
            return unknown_key(".".join(parts[: depth + 1]), known)
        node = node[part]
    return ConfigError(f"conf: {full_key}: cannot be overridden")


CommentedLine = tuple[str, str]
"""A line of generated YAML and its comment ("" for none)."""
_FLOW_WIDTH = 120
"""A list item longer than this many characters as a flow mapping is written as a block instead."""
_COMMENT_COLUMN_MAX = 28
"""Comments are aligned after the longest commented line up to this width; longer lines get theirs 2 spaces on."""


def conf_text(root: Any, notes: Mapping[str, str], prefix: str, header: Sequence[str] = ()) -> str:
    """The text of a generated ``conf/`` file: the comment lines ``header``, then the fields of ``root``.

    ``root`` is a dataclass instance (a section's defaults) or a mapping of names to such instances (a group of
    subsections, as ``directions``); ``prefix`` is its dotted params key. The note of each dotted key in ``notes``
    is its comment (a multi-line note goes above the key). At each level the keys follow field order, except that
    those with a note are in the order of ``notes`` (they swap among their own places). A field that is None
    where its type is an optional dataclass (an absent subsection) is left out; in a list of dataclasses an item
    states the fields with a note and those that differ from their defaults.
    """
    lines = _yaml_fields(root, prefix, notes, 0)
    width = max((len(text) for text, comment in lines if comment and len(text) <= _COMMENT_COLUMN_MAX), default=0)
    out = [f"# {line}".rstrip() for line in header]
    for text, comment in lines:
        out.append(f"{text.ljust(max(width, len(text))) + '  # ' + comment if comment else text}")
    return "\n".join(out) + "\n"


def _fields(value: Any) -> list[tuple[str, Any]]:
    """The (name, value) pairs of a dataclass instance or a mapping; an absent optional subsection left out."""
    if not dataclasses.is_dataclass(value):
        return [(str(name), item) for name, item in value.items()]
    hints = typing.get_type_hints(type(value))
    pairs = []
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        optional_section = any(dataclasses.is_dataclass(arg) for arg in typing.get_args(hints[field.name]))
        if not (item is None and optional_section):
            pairs.append((field.name, item))
    return pairs


def _noted(prefix: str, notes: Mapping[str, str]) -> list[str]:
    """The names of the keys right below the dotted ``prefix`` that have a note, in the order of ``notes``."""
    return [key.rpartition(".")[2] for key in notes if key.rpartition(".")[0] == prefix]


def _yaml_fields(value: Any, prefix: str, notes: Mapping[str, str], indent: int) -> list[CommentedLine]:
    """The lines of the fields of ``value`` (a dataclass instance or a mapping) at ``indent`` spaces."""
    pairs = dict(_fields(value))
    noted = iter([name for name in _noted(prefix, notes) if name in pairs])
    order = [next(noted) if f"{prefix}.{name}" in notes else name for name in pairs]  # noted keys swap places
    lines: list[CommentedLine] = []
    for name in order:
        lines += _yaml_entry(name, pairs[name], f"{prefix}.{name}", notes, indent)
    return lines


def _yaml_entry(name: str, value: Any, key: str, notes: Mapping[str, str], indent: int) -> list[CommentedLine]:
    """The lines of ``name: value`` (the dotted params key ``key``) at ``indent`` spaces, with its note."""
    note = notes.get(key, "")
    above = [(" " * indent + f"# {line}".rstrip(), "") for line in note.splitlines()] if "\n" in note else []
    comment = "" if above else note
    pad = " " * indent
    if dataclasses.is_dataclass(value) or (isinstance(value, Mapping) and value):
        return [*above, (f"{pad}{name}:", comment), *_yaml_fields(value, key, notes, indent + 2)]
    if isinstance(value, list) and any(dataclasses.is_dataclass(item) for item in value):
        items = [line for item in value for line in _yaml_item(item, key, notes, indent + 2)]
        return [*above, (f"{pad}{name}:", comment), *items]
    return [*above, (f"{pad}{name}: {_flow(value)}", comment)]


def _yaml_item(item: Any, key: str, notes: Mapping[str, str], indent: int) -> list[CommentedLine]:
    """The lines of one dataclass item of the list ``key``: its noted fields and those off their defaults, as a
    flow mapping when it is short, else as a block."""
    noted = set(_noted(key, notes))
    defaults = {
        field.name: field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        for field in dataclasses.fields(item)
    }
    stated = {name: value for name, value in _fields(item) if name in noted or value != defaults[name]}
    flow = " " * indent + f"- {_flow(_plain_value(stated))}"
    if len(flow) <= _FLOW_WIDTH:
        return [(flow, "")]
    block = _yaml_fields(stated, key, notes, indent + 2)
    first, comment = block[0]
    return [(" " * indent + "- " + first.lstrip(), comment), *block[1:]]


def _plain_value(value: Any) -> Any:
    """``value`` with its dataclass instances as dicts (for a flow mapping)."""
    if dataclasses.is_dataclass(value):
        return {name: _plain_value(item) for name, item in _fields(value)}
    if isinstance(value, Mapping):
        return {name: _plain_value(item) for name, item in value.items()}
    return [_plain_value(item) for item in value] if isinstance(value, list) else value


def _flow(value: Any) -> str:
    """``value`` (a scalar, or a list or mapping of them) as one line of flow-style YAML."""
    text = yaml.safe_dump([_plain_value(value)], default_flow_style=True, sort_keys=False, width=math.inf)
    return text.strip()[1:-1]


def main() -> None:
    """``python -m pipeline.io.params [--write-conf] [overrides...]``: rewrite params.yaml from conf/ (what dvc
    exp run does), after regenerating conf/'s default options from the dataclasses with ``--write-conf``. The
    composed params are validated against the stages' schemas before anything is written: a refused override
    (an unknown key, with the closest known one) or a value the schema refuses (out of range, wrong type) stops
    it with one line and leaves the output file as it was."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sampler.steps=20")
    parser.add_argument("--conf-dir", default="conf")
    parser.add_argument("--out", default=str(DEFAULT_PARAMS))
    parser.add_argument(
        "--write-conf", action="store_true", help="first regenerate each conf/ group's default option (dataclasses)"
    )
    args = parser.parse_args()
    from pipeline.io.files import atomic_path
    from pipeline.steps.sections import SECTIONS, conf_files  # the schemas import this module

    if args.write_conf:
        for path, text in conf_files(args.conf_dir).items():
            if not path.is_file() or path.read_text() != text:
                with atomic_path(path, ".yaml") as tmp:
                    tmp.write_text(text)
    composed = compose(args.conf_dir, overrides=args.overrides)
    check_params(OmegaConf.create(composed), SECTIONS)
    with atomic_path(args.out, ".yaml") as tmp:
        tmp.write_text(composed)


if __name__ == "__main__":
    run_main(main)
