"""The logging facade: DVC files always, W&B disabled or offline, no secrets in what it writes."""

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.io.errors import ConfigError
from pipeline.io.tracking import (
    LoggingConfig,
    Tracker,
    WandbConfig,
    experiment_name,
    flatten,
    resolve_wandb_mode,
    write_plot_csv,
)


def test_disabled_mode_writes_only_the_dvc_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = LoggingConfig(WandbConfig(dir=str(tmp_path / "wandb")))
    with Tracker("unit", cfg, {"a": 1}) as tracker:
        tracker.metrics(tmp_path / "m.json", {"score": 0.5, "per": {"x": 1}})
        tracker.plot(tmp_path / "p.csv", [{"alpha": 0, "ssim": 1.0}, {"alpha": 1, "ssim": 0.8}], "alpha", "ssim")
        tracker.image("grid", torch.rand(3, 8, 8))
        assert tracker.run_dir is None
    assert json.loads((tmp_path / "m.json").read_text()) == {"score": 0.5, "per": {"x": 1}}
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows == [{"alpha": "0", "ssim": "1.0"}, {"alpha": "1", "ssim": "0.8"}]
    assert not (tmp_path / "wandb").exists()


def test_offline_mode_creates_a_local_run_without_the_api_key(tmp_path, monkeypatch):
    for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = LoggingConfig(WandbConfig(dir=str(tmp_path / "runs")))
    with Tracker("unit", cfg, {"pca": {"n_components": 4}}) as tracker:
        tracker.metrics(tmp_path / "m.json", {"score": 0.25})
        tracker.plot(tmp_path / "p.csv", [{"k": 0, "s": 2.0}, {"k": 1, "s": 1.0}], "k", "s")
        tracker.image("grid", torch.rand(3, 8, 8))
        run_dir = tracker.run_dir
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb")), "the offline run log must exist"
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert secret.encode() not in written


def test_auto_mode_is_offline_without_a_key_and_bad_modes_are_named(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert resolve_wandb_mode(WandbConfig(mode="auto")) == "offline"
    with pytest.raises(ConfigError, match=r"logging\.wandb\.mode 'loud'"):
        resolve_wandb_mode(WandbConfig(mode="loud"))


def test_plot_without_rows_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_plot_csv(tmp_path / "p.csv", [])


def _records(run_file: Path) -> list[Any]:
    """The records of an offline run's ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then the
    LevelDB log format, 32 KiB blocks of chunks (CRC 4 bytes, length 2, type 1: full, first, middle or last)
    whose payloads join into ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, payload, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data.startswith(b":W&B")
    while position + 7 <= len(data):
        left = block - position % block
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            position += left
            continue
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def _updates(items: Any) -> dict[str, Any]:
    """Config or summary update items as {top-level key: value} (a nested key's value under its first part)."""
    values: dict[str, Any] = {}
    for item in items:
        path = list(item.nested_key) or [item.key]
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(item.value_json)
    return values


@dataclass
class OfflineRun:
    """What an offline run's file says: its folder, start time (seconds), group, job type, name, config, summary
    and exit code."""

    folder: Path
    started: float
    group: str
    job_type: str
    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    exit_code: int | None


def _read_run(folder: Path) -> OfflineRun:
    records = _records(next(folder.glob("run-*.wandb")))
    run = next(record.run for record in records if record.HasField("run"))
    config, summary, exit_code = _updates(run.config.update), {}, None
    for record in records:
        if record.HasField("config"):
            config |= _updates(record.config.update)
        elif record.HasField("summary"):
            summary |= _updates(record.summary.update)
        elif record.HasField("exit"):
            exit_code = record.exit.exit_code
    visible = {key: value for key, value in summary.items() if not key.startswith("_")}
    started = run.start_time.seconds + run.start_time.nanos * 1e-9
    return OfflineRun(folder, started, run.run_group, run.job_type, run.display_name, config, visible, exit_code)


EXPERIMENT = "sweep-n3"
"""The DVC experiment name the tiny study runs under (what ``dvc exp run`` sets in DVC_EXP_NAME)."""


@pytest.fixture(scope="module")
def offline_study(tiny_model_dir, tmp_path_factory, single_thread):
    """The tiny study (generate, label, hstats, pca, evaluate of pca_all_steps, evaluate_summary) with W&B offline
    under the experiment :data:`EXPERIMENT`, then pca again on a corrupt statistics file: a failing stage.
    Yields its folder, every offline run read back, and what the stages printed on stderr."""
    from pipeline.io.errors import run_main
    from stages import generate, hstats, label, pca
    from tests.helpers import CLASSIFIER, EVALUATE, run_study, tiny_study_overrides

    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    base = tmp_path_factory.mktemp("wandb_study")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(variable, str(base / variable.lower()))
        patch.setenv("WANDB_MODE", "offline")  # wins over the tiny study's logging.wandb.mode
        patch.setenv("DVC_EXP_NAME", EXPERIMENT)
        patch.delenv("WANDB_API_KEY", raising=False)
        folder = base / "study"
        folder.mkdir()
        overrides = tiny_study_overrides(tiny_model_dir, CLASSIFIER, {"evaluate.methods": "[pca_all_steps]"})
        with contextlib.redirect_stderr(stderr), run_study(folder, overrides, (generate, label, hstats, pca, EVALUATE)):
            Path("data/hstats.safetensors").write_bytes(b"not a statistics file")
            with pytest.raises(SystemExit) as failed:
                run_main(pca.main)
        assert failed.value.code == 1
        # The W&B service writes run folders and logs asynchronously; a stage's process waits for it at exit
        # (wandb's atexit teardown). This process goes on, so wait here, or the last runs may not be on disk yet.
        import wandb

        wandb.teardown()
        runs = sorted(map(_read_run, (base / "wandb_dir" / "wandb").glob("offline-run-*")), key=lambda run: run.started)
        yield SimpleNamespace(folder=folder, runs=runs, stderr=stderr.getvalue())


STAGES = ("generate", "label", "hstats", "pca", "evaluate@pca_all_steps", "evaluate_summary")
"""The DVC stages of :func:`offline_study` that succeed, in order."""


def _run(study: SimpleNamespace, stage: str) -> OfflineRun:
    return next(run for run in study.runs if run.name == f"{EXPERIMENT}/{stage}" and run.exit_code == 0)


def test_runs_are_grouped_by_experiment_with_the_whole_params_as_config(offline_study):
    assert [run.name for run in offline_study.runs] == [f"{EXPERIMENT}/{stage}" for stage in (*STAGES, "pca")]
    assert {run.group for run in offline_study.runs} == {EXPERIMENT}
    assert [run.job_type for run in offline_study.runs] == [stage.split("@")[0] for stage in (*STAGES, "pca")]
    params = OmegaConf.to_container(OmegaConf.load(offline_study.folder / "params.yaml"), resolve=True)
    for run in offline_study.runs:
        assert {key: value for key, value in run.config.items() if key != "_wandb"} == params, run.name
    assert _run(offline_study, "evaluate@pca_all_steps").config["directions"]["pca"]["n_components"] == 3


def test_results_are_tables_and_charts_with_a_short_summary(offline_study):
    evaluate = _run(offline_study, "evaluate@pca_all_steps")
    figures = {"directions", "mean_clean_flip", "min_clean_flip", "mean_broken", "infeasible"}
    assert figures <= set(evaluate.summary) and len(evaluate.summary) <= 40
    assert evaluate.summary["directions"] == 2 and 0.0 <= evaluate.summary["mean_clean_flip"] <= 1.0
    assert {"evaluate/judge", "evaluate/curves", "evaluate/clean_flip_table", "evaluate/grid"} <= set(evaluate.summary)
    assert evaluate.summary["evaluate/judge"]["_type"] == "table-file"
    judge = json.loads(next((evaluate.folder / "files/media/table/evaluate").glob("judge_*.table.json")).read_text())
    assert {"direction", "side", "clean_flip/rate", "broken/rate"} <= set(judge["columns"]) and len(judge["data"]) == 4

    summary = _run(offline_study, "evaluate_summary")
    metrics = json.loads((offline_study.folder / "metrics/evaluate.json").read_text())
    numbers = {key: value for key, value in flatten(metrics).items() if isinstance(value, int | float)}
    assert {key: value for key, value in summary.summary.items() if not key.startswith("evaluate_summary/")} == numbers
    charts = {"evaluate_methods", "evaluate_methods_chart_table", "evaluate_curves", "evaluate_curves_chart_table"}
    assert {f"evaluate_summary/{name}" for name in charts} <= set(summary.summary)
    assert "pca/spectrum_per_step_table" in _run(offline_study, "pca").summary
    assert "hstats/groups" in _run(offline_study, "hstats").summary


def test_a_failing_stage_marks_its_run_failed_and_offline_runs_name_their_sync(offline_study):
    assert [run.exit_code for run in offline_study.runs] == [0] * len(STAGES) + [1]
    failed = offline_study.runs[-1]
    lines = offline_study.stderr.splitlines()
    for run in offline_study.runs:
        said = [line for line in lines if line.endswith(f"upload it with: wandb sync {run.folder}")]
        assert len(said) == 1 and str(run.folder) in said[0].split(";")[0], run.name
    assert f"pca: W&B failed run saved offline in {failed.folder}" in offline_study.stderr
    dry_run = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(failed.folder)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "Would sync 1 run(s)" in dry_run.stdout + dry_run.stderr


def test_the_experiment_outside_dvc_is_the_commit_and_a_hash_of_what_the_params_compute(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    params = {"directions": {"pca": {"n_components": 4}}, "device": "cpu", "logging": {"wandb": {"mode": "auto"}}}
    name = experiment_name(params)
    assert re.fullmatch(r"nogit-[0-9a-f]{8}", name)
    assert experiment_name({**params, "device": "cuda", "logging": {}}) == name  # where it runs, how it logs
    assert experiment_name({**params, "directions": {"pca": {"n_components": 8}}}) != name
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "study"], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert experiment_name(params) == f"{commit}-{name.split('-')[1]}"
    monkeypatch.setenv("DVC_EXP_NAME", "fuzzy-name")
    assert experiment_name(params) == "fuzzy-name"
