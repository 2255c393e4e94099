"""Scale-out of the ``generate``, ``label`` and ``evaluate`` stages: shard jobs run as a Hydra multirun, then a merge.

With ``launch.shards = n > 1`` the stage process (what DVC runs) starts

    python -m stages.shard --config-dir . --config-name params -m hydra/launcher=<launch.launcher>
        +shard.stage=<stage> +shard.count=n '+shard.index=range(0,n)' <launch.overrides...>

which blocks until every job has finished (Hydra launchers wait for their jobs), then merges: for ``generate``
it checks that every shard of the samples store is present and consistent and writes its index; for
``label`` it checks the n label parts (each the table of the store shards s with s % n == i) and writes the
one table (:func:`pipeline.data.labels.merge_label_parts`); for ``evaluate@<method>`` (``+shard.method=<method>``)
job i decodes the edits of the directions k with k % n == i into the stage's work folder, and the stage then judges
the whole file from those decodes. The merged outputs equal an unsharded run's.
Params come from ``params.yaml`` only: the Hydra app takes params.yaml as its primary config and refuses any
other override (:func:`check_job_config`), so DVC sees every setting. ``launch`` itself is an execution detail
that no stage declares, so switching launcher or shard count never invalidates an output.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.io.errors import ConfigError, PipelineError
from pipeline.io.validation import first_difference

LAUNCHER_PLUGINS = {
    "basic": None,  # Hydra's own sequential launcher
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
}
"""Hydra launchers a sharded stage can use, with the plugin module each needs (the ``launch`` extra)."""
SHARDED_STAGES = ("generate", "label", "evaluate")
SHARD_KEY = "shard"
"""Top-level key of the job config that carries the job's stage, index, count and, for ``evaluate``, method
(``+shard.*`` overrides)."""


_SHARD_FIELDS = {"stage", "index", "count", "method"}
"""Every key the ``shard`` section may hold (``method`` only for ``evaluate``)."""


class ShardJobError(PipelineError):
    """A shard job failed, or its outputs are missing or inconsistent at the merge."""


@dataclass
class LaunchConfig:
    """``launch`` params: how ``generate``, ``label`` and ``evaluate`` run.

    ``launcher`` null runs in the stage process; otherwise a Hydra launcher of :data:`LAUNCHER_PLUGINS` runs
    ``shards`` jobs. ``overrides`` are extra Hydra overrides for the launcher (for example
    ``hydra.launcher.partition=gpu``); ``sweep_dir`` is where Hydra keeps the jobs' logs.
    """

    launcher: str | None = None
    shards: int = 1
    overrides: list[str] = field(default_factory=list)
    sweep_dir: str = ".work/launch"

    def __post_init__(self) -> None:
        if self.launcher is not None and self.launcher not in LAUNCHER_PLUGINS:
            raise ConfigError(
                f"params: launch.launcher={self.launcher!r}: expected null or one of {', '.join(LAUNCHER_PLUGINS)}"
            )
        if self.shards < 1:
            raise ConfigError(f"params: launch.shards={self.shards}: must be >= 1")
        if self.shards > 1 and self.launcher is None:
            raise ConfigError(f"params: launch.shards={self.shards} needs launch.launcher (e.g. joblib)")

    @property
    def sharded(self) -> bool:
        """True when the stage runs as shard jobs."""
        return self.launcher is not None and self.shards > 1


def check_launcher_installed(launcher: str) -> None:
    """One-line ConfigError when the Hydra plugin of ``launcher`` is not installed."""
    plugin = LAUNCHER_PLUGINS[launcher]
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        raise ConfigError(
            f"params: launch.launcher={launcher}: the Hydra plugin '{plugin}' is not installed "
            "(pip install -e '.[launch]')"
        )


def _logs(stage: str, cfg: LaunchConfig, method: str | None) -> str:
    """The Hydra sweep folder of ``stage``'s jobs (of ``evaluate``, one per method)."""
    return f"{cfg.sweep_dir}/{stage}" if method is None else f"{cfg.sweep_dir}/{stage}/{method}"


def shard_command(
    stage: str, cfg: LaunchConfig, params_file: str = "params.yaml", method: str | None = None
) -> list[str]:
    """The command line of the Hydra multirun that runs ``stage``'s ``cfg.shards`` shard jobs (``method``: the
    directions file an ``evaluate`` stage judges)."""
    if stage not in SHARDED_STAGES:
        raise ConfigError(f"stage {stage!r}: only {', '.join(SHARDED_STAGES)} run as shard jobs")
    params = Path(params_file)
    return [
        sys.executable, "-m", "stages.shard", "--config-dir", str(params.parent), "--config-name", params.stem, "-m",
        f"hydra/launcher={cfg.launcher}", f"hydra.sweep.dir={_logs(stage, cfg, method)}",
        f"+{SHARD_KEY}.stage={stage}", *([] if method is None else [f"+{SHARD_KEY}.method={method}"]),
        f"+{SHARD_KEY}.count={cfg.shards}", f"+{SHARD_KEY}.index=range(0,{cfg.shards})",
        *cfg.overrides,
    ]  # fmt: skip


def run_shard_jobs(stage: str, cfg: LaunchConfig, method: str | None = None) -> None:
    """Run ``stage``'s shard jobs (of ``evaluate``: for ``method``) through the configured launcher and wait for
    all of them.

    Raises :class:`ShardJobError` (one line, naming the logs folder) when the multirun fails.
    """
    assert cfg.launcher is not None
    check_launcher_installed(cfg.launcher)
    command = shard_command(stage, cfg, method=method)
    name = stage if method is None else f"{stage}@{method}"
    print(f"{name}: {cfg.shards} shard jobs via {cfg.launcher}: {' '.join(command)}", file=sys.stderr)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ShardJobError(
            f"{name}: the shard jobs failed (exit {result.returncode}); logs under {_logs(stage, cfg, method)}"
        )


@dataclass(frozen=True)
class ShardJob:
    """One job of a sharded stage: ``stage`` on partition ``index`` of ``count`` (``method``: the directions file
    of an ``evaluate`` job, None for the other stages)."""

    stage: str
    index: int
    count: int
    method: str | None = None

    @property
    def partition(self) -> tuple[int, int]:
        """(index, count), as :func:`pipeline.data.store_writing.generate_store` takes it."""
        return self.index, self.count


def check_job_config(job_config: Mapping[str, Any], params: Mapping[str, Any]) -> ShardJob:
    """The :class:`ShardJob` of a Hydra job config that must be ``params`` plus the ``shard`` section.

    Any other difference (a params override on the command line, which DVC would not see) is a one-line
    ConfigError naming the first differing key; so is an ``evaluate`` job without ``shard.method`` or with one not
    in ``evaluate.methods``, and a ``shard.method`` on another stage.
    """
    shard = job_config.get(SHARD_KEY)
    if not isinstance(shard, Mapping) or not {"stage", "index", "count"} <= set(shard) <= _SHARD_FIELDS:
        raise ConfigError(
            f"shard job: expected +{SHARD_KEY}.stage, +{SHARD_KEY}.index and +{SHARD_KEY}.count "
            f"(and +{SHARD_KEY}.method for evaluate)"
        )
    rest = {key: value for key, value in job_config.items() if key != SHARD_KEY}
    difference = first_difference(rest, dict(params))
    if difference is not None:
        raise ConfigError(
            f"shard job: '{difference}' differs from params.yaml; change params with dvc exp run -S or "
            "python -m pipeline.io.params, not on the shard command line"
        )
    stage, index, count = shard["stage"], shard["index"], shard["count"]
    if stage not in SHARDED_STAGES:
        raise ConfigError(f"shard job: {SHARD_KEY}.stage={stage!r}: expected one of {', '.join(SHARDED_STAGES)}")
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ConfigError(f"shard job: {SHARD_KEY}.index={index!r}, count={count!r}: need 0 <= index < count")
    method = shard.get("method")
    if stage == "evaluate":
        methods = params.get("evaluate", {}).get("methods", [])
        if method is None:
            raise ConfigError(
                f"shard job: evaluate needs +{SHARD_KEY}.method, one of evaluate.methods ({', '.join(methods)})"
            )
        if method not in methods:
            raise ConfigError(
                f"shard job: {SHARD_KEY}.method={method!r} is not in evaluate.methods ({', '.join(methods)})"
            )
    elif method is not None:
        raise ConfigError(f"shard job: {SHARD_KEY}.method={method!r}: only evaluate jobs take a method, not {stage}")
    return ShardJob(stage, index, count, method)


def job_device(device: str, index: int) -> str:
    """The device of shard job ``index``: with ``device`` "auto" and several visible GPUs, jobs go round-robin
    over them (a joblib run on one multi-GPU machine); otherwise ``device`` itself."""
    if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{index % torch.cuda.device_count()}"
    return device
