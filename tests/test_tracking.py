"""The logging facade: DVC files always, W&B disabled or offline, no secrets in what it writes."""

import csv
import json

import pytest
import torch

from pipeline.io.errors import ConfigError
from pipeline.io.tracking import LoggingConfig, Tracker, WandbConfig, resolve_wandb_mode, write_plot_csv


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
