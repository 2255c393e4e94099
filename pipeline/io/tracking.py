"""One logging facade for every stage: DVC metric/plot files (always) and a W&B run (optional).

DVC reads plain files the project writes itself: metrics as JSON, plots as CSV. W&B receives the same numbers
as tables and charts, the key figures as the run summary, media (edit grids with captions), and the whole of
``params.yaml`` as the run config. W&B output never becomes a DVC dependency, and the W&B run directory lives
outside the repository by default, so temporary DVC experiment workspaces do not lose it.

Runs are organised for comparing experiments: the ``group`` is the experiment (the DVC experiment's name under
``dvc exp run``, else the commit and a hash of the params), ``job_type`` the stage and the run's name
``<experiment>/<stage>``; a stage that fails marks its run failed (exit code 1).

Mode (``logging.wandb.mode``): ``disabled`` (no W&B at all, nothing imported), ``offline`` (a local run,
``wandb sync`` later), ``online``, or ``auto``: online when an API key is configured (``WANDB_API_KEY`` or a netrc
login), offline otherwise. The ``WANDB_MODE`` environment variable, when set, wins (tests set it to
``disabled``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import netrc
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path, write_json
from pipeline.io.params import RUNTIME_KEYS

if TYPE_CHECKING:
    from pipeline.io.params import StageParams

WANDB_MODES = ("auto", "disabled", "offline", "online")
EXPERIMENT_ENV = "DVC_EXP_NAME"
"""Set by ``dvc exp run`` (queued or not) to the experiment's name: the W&B group of its runs."""


@dataclass
class WandbConfig:
    """W&B settings; ``dir`` empty means ``$WANDB_DIR`` or ``~/.cache/hspace-directions/wandb``. wandb writes
    each run to ``<dir>/wandb/offline-run-<time>-<id>`` (offline) or ``<dir>/wandb/run-<time>-<id>``."""

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


def _short_commit() -> str:
    """The working directory's git HEAD as 8 hex digits, or "nogit" outside a repository (or without git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "nogit"


def params_hash(params: Mapping[str, Any]) -> str:
    """8 hex digits of the SHA-256 of ``params`` (a plain nested dict) as canonical JSON, without the runtime keys
    (``device``, ``logging``, ``launch``: where a stage runs and how it logs, never what it computes)."""
    content = {key: value for key, value in params.items() if key not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:8]


def experiment_name(params: Mapping[str, Any]) -> str:
    """The experiment a stage run belongs to: ``$DVC_EXP_NAME`` under ``dvc exp run``, else (plain ``dvc repro``
    or a stage run by hand) ``<short commit>-<params hash>``, equal for every stage of one run of the study."""
    return os.environ.get(EXPERIMENT_ENV) or f"{_short_commit()}-{params_hash(params)}"


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


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _table_data(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and data of a W&B table of ``rows``: nested mappings flattened ("a/b"), the union of the rows'
    keys in first-seen order (None where a row lacks one), lists as JSON text, and a column of mixed types as
    text (W&B types each column by its first value)."""
    flat = [flatten(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    data = [[row.get(c) if not isinstance(row.get(c), list | tuple) else json.dumps(row[c]) for c in columns]
            for row in flat]  # fmt: skip
    for j in range(len(columns)):
        kinds = {float if _is_number(row[j]) else type(row[j]) for row in data if row[j] is not None}
        if len(kinds) > 1:
            for row in data:
                row[j] = None if row[j] is None else str(row[j])
    return columns, data


class Tracker:
    """Logging for one stage run. Use as a context manager; the W&B run is finished on exit, marked failed (exit
    code 1) when the block raised. Offline, one line on stderr names the run folder and its ``wandb sync``.

    ``stage`` is the run's job type and the prefix of every logged key; ``params`` (a plain nested dict; the
    whole ``params.yaml`` from :meth:`of`) is the W&B config and names the experiment (:func:`experiment_name`),
    the run's group; ``run`` is the DVC stage's own name where it differs from ``stage`` (``evaluate@pca``).
    """

    def __init__(self, stage: str, cfg: LoggingConfig, params: Mapping[str, Any] | None = None, run: str = ""):
        self.stage = stage
        self.name = run or stage
        self.mode = resolve_wandb_mode(cfg.wandb)
        self._run = None
        if self.mode != "disabled":
            import wandb

            config = dict(params or {})
            experiment = experiment_name(config)
            run_dir = _wandb_dir(cfg.wandb)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                dir=str(run_dir),
                mode=self.mode,
                group=experiment,
                job_type=stage,
                name=f"{experiment}/{self.name}",
                config=config,
                tags=list(cfg.wandb.tags),
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
            )

    @classmethod
    def of(cls, params: StageParams, run: str = "") -> Tracker:
        """The tracker of a stage run: its ``logging`` section, the whole params file as the config."""
        everything = OmegaConf.to_container(params.params, resolve=True)
        return cls(params.stage, params.runtime("logging", LoggingConfig), everything, run)  # type: ignore[arg-type]

    @property
    def run_dir(self) -> Path | None:
        """The local W&B run folder (``.../wandb/offline-run-<time>-<id>`` offline), or None when disabled."""
        return Path(self._run.dir).parent if self._run is not None else None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.finish(failed=exc_type is not None)

    def finish(self, failed: bool = False) -> None:
        """Close the W&B run (idempotent), with exit code 1 when ``failed``; print one line on stderr: offline,
        where the run is and the command that uploads it; online, the run's page."""
        if self._run is None:
            return
        run, run_dir, url = self._run, self.run_dir, self._run.url
        self._run = None
        run.finish(exit_code=1 if failed else 0)
        state = "failed run" if failed else "run"
        if self.mode == "offline":
            print(f"{self.name}: W&B {state} saved offline in {run_dir}; upload it with: wandb sync {run_dir}",
                  file=sys.stderr)  # fmt: skip
        elif url:
            print(f"{self.name}: W&B {state} {url}", file=sys.stderr)

    def metrics(self, path: str | Path, values: Mapping[str, Any]) -> None:
        """Write a DVC metrics JSON file and put its numbers in the W&B run summary (:meth:`summary`)."""
        write_json(path, dict(values))
        self.summary(values)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Put the numbers of ``values`` (nested mappings flattened to "a/b" keys; text and lists left out) in the
        W&B run summary: the run's key figures, one value per key, for comparing runs."""
        if self._run is not None:
            for key, value in flatten(values).items():
                if _is_number(value) or isinstance(value, bool):
                    self._run.summary[key] = value

    def timings(self, values: Mapping[str, float]) -> None:
        """Report how long the run took (one line on stderr, and the W&B summary as ``timing/<key>``, seconds).
        Timings stay out of the DVC metrics files, which a rerun must reproduce byte for byte."""
        print(f"{self.stage}: " + ", ".join(f"{key} {value:.4g}" for key, value in values.items()), file=sys.stderr)
        self.summary({"timing": dict(values)})

    def table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Log ``rows`` (dicts; nested mappings become "a/b" columns) as the W&B table ``<stage>/<key>``."""
        if self._run is None or not rows:
            return
        import wandb

        columns, data = _table_data(rows)
        self._run.log({f"{self.stage}/{key}": wandb.Table(columns=columns, data=data)})

    def lines(
        self,
        key: str,
        rows: Sequence[Mapping[str, Any]],
        x: str,
        y: str | Sequence[str],
        series: Sequence[str] = (),
        title: str = "",
    ) -> None:
        """Log a W&B line plot ``<stage>/<key>`` of ``y`` against ``x`` (numeric columns of ``rows``): one line per
        distinct value of the ``series`` columns (named by those values, joined by spaces), or, for several ``y``
        columns, one line per column. Points are sorted by x; missing values are skipped."""
        if self._run is None or not rows:
            return
        import wandb

        ys = [y] if isinstance(y, str) else list(y)
        points: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            for column in ys:
                name = " ".join([*(str(row[s]) for s in series), *([column] if len(ys) > 1 else [])]) or column
                if row.get(x) is not None and row.get(column) is not None:
                    points.setdefault(name, []).append((row[x], row[column]))
        lines = {name: sorted(values) for name, values in points.items()}
        chart = wandb.plot.line_series(
            xs=[[px for px, _ in line] for line in lines.values()],
            ys=[[py for _, py in line] for line in lines.values()],
            keys=list(lines),
            title=title or key,
            xname=x,
        )
        self._run.log({f"{self.stage}/{key}": chart})

    def plot(
        self, path: str | Path, rows: Sequence[Mapping[str, Any]], x: str, y: str | Sequence[str], title: str = "",
        series: Sequence[str] = (),
    ) -> None:  # fmt: skip
        """Write a DVC plot CSV; log the same rows to W&B as the table ``<stage>/<file stem>`` and a chart of ``y``
        (a column, or several) against ``x``, ``<stage>/<file stem>_chart``: lines (one per value of the ``series``
        columns or per y column, see :meth:`lines`) when x is numeric, else a bar per row of the first y column
        when the x values are distinct labels (a method, a variant); no chart otherwise."""
        write_plot_csv(path, rows)
        if self._run is None:
            return
        import wandb

        stem = Path(path).stem
        self.table(stem, rows)
        labels = [row[x] for row in rows]
        if all(_is_number(label) for label in labels):
            self.lines(f"{stem}_chart", rows, x, y, series, title)
        elif len(set(map(str, labels))) == len(labels):
            value = y if isinstance(y, str) else y[0]
            bars = wandb.Table(columns=[x, value], data=[[str(row[x]), row[value]] for row in rows])
            self._run.log({f"{self.stage}/{stem}_chart": wandb.plot.bar(bars, x, value, title=title or stem)})

    def image(self, key: str, image: torch.Tensor | str | Path, caption: str = "") -> None:
        """Log an image ([3, H, W] in [0, 1], or a PNG path) with its caption to W&B; no-op when W&B is disabled."""
        if self._run is None:
            return
        import wandb

        data = str(image) if isinstance(image, str | Path) else image.detach().clamp(0, 1).cpu()
        self._run.log({f"{self.stage}/{key}": wandb.Image(data, caption=caption or None)})

    def html(self, key: str, path: str | Path) -> None:
        """Log an HTML file (a self-contained page) to W&B; no-op when W&B is disabled."""
        if self._run is None:
            return
        import wandb

        self._run.log({f"{self.stage}/{key}": wandb.Html(Path(path).read_text())})

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
