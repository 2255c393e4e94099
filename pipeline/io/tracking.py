"""One logging facade for every stage: DVC metric/plot files (always) and a W&B run (optional).

DVC reads plain files the project writes itself: metrics as JSON, plots as CSV. W&B receives the same
numbers plus media (edit grids, spectra as line plots) and the stage's params. W&B output never becomes
a DVC dependency, and the W&B run directory lives outside the repository by default, so temporary DVC
experiment workspaces do not lose it.

Mode (``logging.wandb.mode``): ``disabled`` (no W&B at all), ``offline`` (a local run, ``wandb sync``
later), ``online``, or ``auto``: online when an API key is configured (``WANDB_API_KEY`` or a netrc
login), offline otherwise. The ``WANDB_MODE`` environment variable, when set, wins (tests set it to
``disabled``).
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path, write_json

WANDB_MODES = ("auto", "disabled", "offline", "online")


@dataclass
class WandbConfig:
    """W&B settings; ``dir`` empty means ``$WANDB_DIR`` or ``~/.cache/hspace-directions/wandb``."""

    mode: str = "auto"
    project: str = "hspace-directions"
    entity: str = ""
    dir: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    """The ``logging`` params section."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(cfg: WandbConfig) -> str:
    """The effective W&B mode: ``WANDB_MODE`` if set, else the configured one with ``auto`` resolved."""
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if mode not in WANDB_MODES:
        raise ConfigError(f"logging.wandb.mode '{mode}': unknown; expected one of {', '.join(WANDB_MODES)}")
    if mode == "auto":
        return "online" if _has_api_key() else "offline"
    return mode


def _wandb_dir(cfg: WandbConfig) -> Path:
    return Path(cfg.dir or os.environ.get("WANDB_DIR") or Path.home() / ".cache" / "hspace-directions" / "wandb")


def write_plot_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV file for ``dvc plots``, atomically."""
    if not rows:
        raise ValueError(f"plot '{path}': no rows to write")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue())


class Tracker:
    """Logging for one stage run. Use as a context manager; the W&B run is finished on exit.

    ``params`` (a plain dict, for example the stage's params sections) is stored as the W&B config.
    """

    def __init__(self, stage: str, cfg: LoggingConfig, params: Mapping[str, Any] | None = None):
        self.stage = stage
        self.mode = resolve_wandb_mode(cfg.wandb)
        self._run = None
        if self.mode != "disabled":
            import wandb

            run_dir = _wandb_dir(cfg.wandb)
            run_dir.mkdir(parents=True, exist_ok=True)
            tags = [*cfg.wandb.tags, *([os.environ["DVC_EXP_NAME"]] if os.environ.get("DVC_EXP_NAME") else [])]
            self._run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                dir=str(run_dir),
                mode=self.mode,
                job_type=stage,
                group=stage,
                config=dict(params or {}),
                tags=tags,
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
            )

    @property
    def run_dir(self) -> Path | None:
        """The local W&B run folder, or None when W&B is disabled."""
        return Path(self._run.dir).parent if self._run is not None else None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def finish(self) -> None:
        """Close the W&B run (idempotent)."""
        if self._run is not None:
            self._run.finish()
            self._run = None

    def metrics(self, path: str | Path, values: Mapping[str, Any]) -> None:
        """Write a DVC metrics JSON file and put the (flattened) numbers in the W&B summary."""
        write_json(path, dict(values))
        if self._run is not None:
            for key, value in flatten(values).items():
                self._run.summary[f"{self.stage}/{key}"] = value

    def timings(self, values: Mapping[str, float]) -> None:
        """Report how long the run took (one line on stderr, and the W&B summary). Timings stay out of the DVC
        metrics files, which a rerun must reproduce byte for byte."""
        print(f"{self.stage}: " + ", ".join(f"{key} {value:.4g}" for key, value in values.items()), file=sys.stderr)
        if self._run is not None:
            for key, value in values.items():
                self._run.summary[f"{self.stage}/timing/{key}"] = value

    def plot(self, path: str | Path, rows: Sequence[Mapping[str, Any]], x: str, y: str, title: str = "") -> None:
        """Write a DVC plot CSV and log the same rows to W&B as a table with a line plot of ``y`` vs ``x``."""
        write_plot_csv(path, rows)
        if self._run is not None:
            import wandb

            columns = list(rows[0])
            mixed = {c for c in columns if len({type(row[c]) for row in rows if row[c] is not None}) > 1}
            data = [[str(row[c]) if c in mixed and row[c] is not None else row[c] for c in columns] for row in rows]
            table = wandb.Table(columns=columns, data=data)  # a column of mixed types is logged as text
            key = f"{self.stage}/{Path(path).stem}"
            self._run.log({key: wandb.plot.line(table, x, y, title=title or key)})

    def image(self, key: str, image: torch.Tensor | str | Path, caption: str = "") -> None:
        """Log an image ([3, H, W] in [0, 1], or a PNG path) to W&B; no-op when W&B is disabled."""
        if self._run is None:
            return
        import wandb

        data = str(image) if isinstance(image, str | Path) else image.detach().clamp(0, 1).cpu()
        self._run.log({f"{self.stage}/{key}": wandb.Image(data, caption=caption or None)})

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar values (for example a training loss) to W&B history; no-op when disabled."""
        if self._run is not None:
            self._run.log({f"{self.stage}/{k}": v for k, v in values.items()}, step=step)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with "/"-joined keys: {"a": {"b": 1}} -> {"a/b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}/")
        else:
            flat[name] = value
    return flat
