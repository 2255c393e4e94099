"""Scale-out of ``evaluate``: the stage of one method as a 4-shard Hydra multirun (joblib) writes exactly the unsharded
run's outputs, every decode made by the jobs; a shard job decodes only its directions, into its stage's folder
alone; a shard job without a method, or with one outside ``evaluate.methods``, stops with a one-line error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache
from pipeline.io.launch import ShardJob, check_job_config
from pipeline.io.params import compose, load_params
from pipeline.steps.sections import stage_params
from stages import evaluate, generate, hstats, label, pca
from tests.helpers import CLASSIFIER, ROOT, run_study, tiny_study_overrides

METHOD = "pca_all_steps"
SHARDS = 4
CHANGES = {"evaluate.max_directions": 3}
"""Three PCA directions judged: over 4 jobs, the last one has none."""


def _overrides(model_dir: Path) -> list[str]:
    return tiny_study_overrides(model_dir, CLASSIFIER, CHANGES)


def _outputs(folder: Path) -> dict[str, bytes]:
    """The evaluate stage's outputs (details JSON, records, grid PNG) by path under plots/evaluate/<method>/."""
    root = folder / "plots/evaluate" / METHOD
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def study(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """The tiny study up to the PCA directions (generate, label, hstats, pca), run in this process."""
    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    folder = tmp_path_factory.mktemp("study")
    with run_study(folder, _overrides(tiny_model_dir), (generate, label, hstats, pca)):
        return folder


@pytest.mark.slow
def test_four_shard_joblib_evaluation_equals_the_unsharded_run(study: Path, tiny_model_dir: Path, tmp_path: Path):
    unsharded = shutil.copytree(study, tmp_path / "unsharded")
    fetched: list[str] = []
    fetch = WorkCache.fetch

    def counted(self: WorkCache, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        fetched.append(key)
        return fetch(self, key, compute)

    stage = SimpleNamespace(main=lambda: evaluate.main([METHOD]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WorkCache, "fetch", counted)
        with run_study(unsharded, _overrides(tiny_model_dir), (stage,)):
            pass
    assert fetched, "the unsharded run decodes through its work folder"

    sharded = shutil.copytree(study, tmp_path / "sharded")
    overrides = [*_overrides(tiny_model_dir), "launch=joblib", f"launch.shards={SHARDS}"]
    (sharded / "params.yaml").write_text(compose(ROOT / "conf", overrides=overrides))
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled",
                       HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", METHOD], cwd=sharded, env=environment, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"evaluate@{METHOD}: {SHARDS} shard jobs via joblib" in result.stderr
    assert len(list((sharded / f".work/launch/evaluate/{METHOD}").glob("[0-9]*"))) == SHARDS
    assert f"resumed {len(fetched)}" in result.stderr, "every decode of the stage was loaded from the jobs' work"
    assert not (sharded / f".work/evaluate@{METHOD}").exists(), "the work folder is removed once the outputs exist"
    expected, written = _outputs(unsharded), _outputs(sharded)
    assert sorted(written) == sorted(expected) and len(expected) >= 3
    for name, data in expected.items():
        assert written[name] == data, f"{name} differs from the unsharded run's"


def test_a_shard_job_decodes_only_its_directions_into_its_stages_folder(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(shutil.copytree(study, tmp_path / "job"))
    job = ShardJob("evaluate", 0, 2, METHOD)
    with pytest.raises(ConfigError, match=rf"work folder '.work/evaluate@{METHOD}': not stamped by this job's stage"):
        evaluate.run_shard(load_params(), job, "cpu")
    work = evaluate.work_cache(stage_params("evaluate"), METHOD, torch.device("cpu"))  # what the stage opens first
    evaluate.run_shard(load_params(), job, "cpu")
    assert work.folder is not None
    keys = []
    for path in work.folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as unit:
            keys.append(unit.metadata()["key"])
    assert {key.split("/")[0] for key in keys} == {METHOD}
    assert {int(key.split("/")[1]) for key in keys} == {0, 2}, "directions k with k % 2 == 0 of the three judged"


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({}, r"shard job: evaluate needs \+shard\.method, one of evaluate\.methods \(pca_per_step, "),
        ({"method": "pullback"}, r"shard job: shard\.method='pullback' is not in evaluate\.methods \("),
    ],
    ids=["missing", "not_in_evaluate_methods"],
)
def test_an_evaluate_shard_job_needs_a_method_of_evaluate_methods(shard: dict[str, str], message: str):
    params = {"evaluate": {"methods": ["pca_per_step", "supervised"]}, "device": "cpu"}
    with pytest.raises(ConfigError, match=message) as error:
        check_job_config({**params, "shard": {"stage": "evaluate", "index": 0, "count": 2, **shard}}, params)
    assert "\n" not in str(error.value)
    good = {"stage": "evaluate", "index": 1, "count": 2, "method": "supervised"}
    job = check_job_config({**params, "shard": good}, params)
    assert job == ShardJob("evaluate", 1, 2, "supervised") and job.partition == (1, 2)
    with pytest.raises(ConfigError, match=r"shard\.method='supervised': only evaluate jobs take a method, not label"):
        check_job_config({**params, "shard": {**good, "stage": "label"}}, params)
