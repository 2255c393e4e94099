"""Scale-out: generate and label as a 3-shard Hydra multirun (joblib) merge to exactly the
unsharded run's outputs; the merge refuses missing or inconsistent parts; shard jobs refuse params overrides."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.data.labels import label_part_path, merge_label_parts
from pipeline.data.store import StoreError, open_store
from pipeline.io.errors import ConfigError
from pipeline.io.launch import LaunchConfig, ShardJob, ShardJobError, check_job_config, shard_command
from pipeline.io.params import compose, validate
from stages import generate, label
from tests.helpers import run_study, tiny_study_overrides

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models/toyfaces/classifier"
SHARDS = 3


def _overrides(model_dir: Path) -> list[str]:
    # 4 store shards (the last holds 2) over 3 jobs: job 0 has two
    changes = {"sampler.eta": 1.0, "sampler.batch_size": 4, "generate.num_samples": 14, "generate.shard_size": 4}
    return tiny_study_overrides(model_dir, CLASSIFIER, changes)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.parts[len(folder.parts)] in ("data", "metrics")
    }


@pytest.fixture(scope="module")
def unsharded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """The tiny study's generate and label, run in this process without shard jobs."""
    folder = tmp_path_factory.mktemp("unsharded")
    with run_study(folder, _overrides(tiny_model_dir), (generate, label)):
        return folder


@pytest.mark.skipif(not CLASSIFIER.is_dir(), reason="committed ToyFaces classifier absent")
def test_three_shard_joblib_multirun_equals_the_unsharded_run(unsharded: Path, tiny_model_dir: Path, tmp_path: Path):
    overrides = [*_overrides(tiny_model_dir), "launch=joblib", f"launch.shards={SHARDS}"]
    (tmp_path / "params.yaml").write_text(compose(ROOT / "conf", overrides=overrides))
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled",
                       HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))  # fmt: skip
    for stage in ("generate", "label"):
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=environment, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{SHARDS} shard jobs via joblib" in result.stderr
    jobs = sorted((tmp_path / ".work/launch/generate").glob("[0-9]*"))
    assert len(jobs) == SHARDS, "one Hydra job folder per shard"
    sharded, expected = _files(tmp_path), _files(unsharded)
    assert sorted(sharded) == sorted(expected)
    for name, data in expected.items():
        assert sharded[name] == data, f"{name} differs from the unsharded run's"
    assert not list((tmp_path / ".work/label").glob("*.csv")), "label parts are removed after the merge"


def test_merge_refuses_a_store_with_a_missing_shard(unsharded: Path, tiny_model_dir: Path, tmp_path: Path):
    from pipeline.diffusion.models import ModelConfig, open_model
    from pipeline.diffusion.sampling import SamplerConfig
    from pipeline.steps import generate
    from pipeline.steps.generate import GenerateConfig

    copy = tmp_path / "samples"
    shutil.copytree(unsharded / "data/samples", copy)
    (copy / "index.json").unlink()
    (copy / "shard-00002.safetensors").unlink()
    params = OmegaConf.load(unsharded / "params.yaml")
    model_cfg = validate(params.model, ModelConfig, "model")
    model = open_model(model_cfg, "cpu")
    sampler = validate(params.sampler, SamplerConfig, "sampler")
    cfg = validate(params.generate, GenerateConfig, "generate")
    with pytest.raises(StoreError, match=r"1 of 4 shards missing or unreadable \(shard-00002.safetensors\)"):
        generate.run(model, model_cfg, sampler, cfg, copy, sample=False)
    assert not (copy / "index.json").exists() and not (copy / "shard-00002.safetensors").exists()


def test_label_merge_checks_parts(unsharded: Path, tmp_path: Path):
    store = open_store(unsharded / "data/samples")
    header, *rows = (unsharded / "data/labels.csv").read_text().splitlines()
    by_shard = [rows[entry.start : entry.start + entry.count] for entry in store.shards]
    for index in range(2):
        part = [line for shard in range(index, len(by_shard), 2) for line in by_shard[shard]]
        label_part_path(tmp_path, ShardJob("label", index, 2)).write_text("\n".join([header, *part]) + "\n")
    merge_label_parts(tmp_path, store, 2, tmp_path / "labels.csv")
    assert (tmp_path / "labels.csv").read_bytes() == (unsharded / "data/labels.csv").read_bytes()
    with pytest.raises(ShardJobError, match="3 of 3 parts missing"):
        merge_label_parts(tmp_path, store, 3, tmp_path / "other.csv")
    first = label_part_path(tmp_path, ShardJob("label", 0, 2))
    first.write_text(first.read_text().replace(header, header.replace("smiling", "grinning")))
    with pytest.raises(ShardJobError, match="columns differ"):
        merge_label_parts(tmp_path, store, 2, tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()


def test_shard_jobs_refuse_params_overrides_and_bad_launch_config():
    params = {"generate": {"num_samples": 10}, "device": "cpu"}
    job = check_job_config({**params, "shard": {"stage": "label", "index": 1, "count": 3}}, params)
    assert job == ShardJob("label", 1, 3) and job.partition == (1, 3)
    with pytest.raises(ConfigError, match=r"'generate.num_samples' differs from params\.yaml"):
        check_job_config({"generate": {"num_samples": 20}, "device": "cpu", "shard": job.__dict__}, params)
    with pytest.raises(ConfigError, match="need 0 <= index < count"):
        check_job_config({**params, "shard": {"stage": "label", "index": 3, "count": 3}}, params)
    with pytest.raises(ConfigError, match=r"launch\.launcher='ray'"):
        LaunchConfig(launcher="ray")
    with pytest.raises(ConfigError, match=r"launch\.shards=4 needs launch\.launcher"):
        LaunchConfig(shards=4)
    command = shard_command("generate", LaunchConfig(launcher="submitit_slurm", shards=8, overrides=["a=b"]))
    assert command[-4:] == ["+shard.stage=generate", "+shard.count=8", "+shard.index=range(0,8)", "a=b"]
    assert "hydra/launcher=submitit_slurm" in command
