"""Reading and validating ``params.yaml`` sections against dataclass schemas; composing it from ``conf/``.

Stages read only ``params.yaml`` (what DVC tracks); ``conf/`` is the Hydra tree it is composed from
(``dvc exp run`` does that, or ``python -m pipeline.io.params``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.io.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


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


def validate(section: Any, schema: type[T], key: str) -> T:
    """Merge ``section`` (a mapping) onto ``schema``'s defaults and return the typed object.

    Unknown keys and values of the wrong type raise ConfigError with one line naming the full key.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section if section is not None else {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        full_key = f"{key}.{error.full_key}" if error.full_key else key
        message = str(error).splitlines()[0]
        raise ConfigError(f"params: {full_key}: {message}") from error


def load_section(key: str, schema: type[T], params: DictConfig | None = None) -> T:
    """The validated section ``key`` of ``params`` (loaded from ``params.yaml`` when not given)."""
    params = load_params() if params is None else params
    if key not in params:
        raise ConfigError(f"params: section '{key}' is missing")
    return validate(params[key], schema, key)


def load_value(key: str, expected: type, params: DictConfig | None = None) -> Any:
    """A top-level scalar of ``params`` (for example ``device``), checked against ``expected``."""
    params = load_params() if params is None else params
    if key not in params:
        raise ConfigError(f"params: key '{key}' is missing")
    value = params[key]
    if not isinstance(value, expected):
        raise ConfigError(f"params: {key}={value!r}: expected {expected.__name__}")
    return value


def compose(
    conf_dir: str | Path = "conf", config_name: str = "config", overrides: list[str] | None = None
) -> str:
    """Compose the Hydra tree as DVC does (compose, resolve, dump) and return the YAML text."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def main() -> None:
    """``python -m pipeline.io.params [overrides...]``: rewrite params.yaml from conf/ (what dvc exp run does)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sampler.steps=20")
    parser.add_argument("--conf-dir", default="conf")
    parser.add_argument("--out", default=str(DEFAULT_PARAMS))
    args = parser.parse_args()
    from pipeline.io.files import atomic_path

    with atomic_path(args.out, ".yaml") as tmp:
        tmp.write_text(compose(args.conf_dir, overrides=args.overrides))


if __name__ == "__main__":
    main()
