"""Helpers shared by the tests (fixtures live in conftest.py): the tiny study's params and how to run stages
in a temporary workspace, and an in-memory CLIP tokenizer."""

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models/toyfaces/classifier"
"""The committed ToyFaces classifier, which labels every tiny study."""

def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIP tokenizer built in memory (no download): the 256 byte-level characters, each also with the
    end-of-word mark, plus the start and end tokens (514 tokens, no merges), so every character is a token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    tokens = characters + [f"{character}</w>" for character in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=max_length)


TINY_STUDY: dict[str, object] = {
    "sampler.steps": 4,
    "sampler.batch_size": 16,
    "generate.num_samples": 12,
    "generate.shard_size": 6,
    "hstats.top_k": 3,
    "hstats.label_conditioned": "false",
    "directions.supervised.groups": "extremes",  # a random classifier on 12 samples leaves label groups empty
    "directions.supervised.estimator": "mean_difference",  # the one estimator extremes serve
    "directions.supervised.significance": "null",
    "directions.pca.n_components": 3,
    "directions.jacobian.num_samples": 1,
    "directions.jacobian.k": 2,
    "directions.jacobian.steps": "[0,2]",
    "directions.jacobian.source_step": 2,
    "directions.jacobian.mask": "[0.5,0.25,1.0,0.75]",
    "directions.pullback.num_samples": 2,
    "directions.pullback.basis_size": 2,
    "directions.pullback.analysis_t": "[1.0]",
    "directions.pullback.curvedness_points": 2,
    "directions.pullback.iterations": 2,
    "directions.pullback.scales": "[0.0,1.0]",
    "directions.pullback.preview_directions": 1,
    "evaluate.choose_samples": 4,
    "evaluate.num_samples": 4,
    "evaluate.untargeted_choose_samples": 4,
    "evaluate.untargeted_samples": 4,
    "evaluate.max_extensions": 1,
    "evaluate.max_directions": 2,
    "evaluate.scales": "[1.0,2.0]",
    "evaluate.method_scales.pullback_global": "[1.0,2.0]",
    "evaluate.min_eligible": 1,
    "evaluate.grid_samples": 1,
    "evaluate.broken.calibration_samples": 8,
    "evaluate.broken.reference_samples": 4,
    "logging.wandb.mode": "disabled",
    "device": "cpu",
}
"""Params of a whole study small enough for a test (seconds on one core)."""


def tiny_study_overrides(model_dir: Path, classifier: Path, changes: dict[str, object] | None = None) -> list[str]:
    """Hydra overrides of :data:`TINY_STUDY` for ``model_dir`` and ``classifier``, with ``changes`` applied."""
    values = {"model.source": model_dir, **TINY_STUDY, "classifier.path": classifier,
              "edit.inputs": ROOT / "inputs/toyfaces", **(changes or {})}  # fmt: skip
    return [f"{key}={value}" for key, value in values.items()]


EVERY_METHOD = ("pca_all_steps", "supervised", "jacobian", "pullback_global")
"""One directions file of each method."""
EVERY_METHOD_STUDY: dict[str, object] = {
    "sampler.batch_size": 8,
    "directions.pca.n_components": 2,
    "evaluate.methods": f"[{','.join(EVERY_METHOD)}]",
    "evaluate.scales": "[1.0]",
}
"""Changes to :data:`TINY_STUDY` for a study that evaluates one file of every method, one scale each."""


def _preview_every_method() -> None:
    from pipeline.steps.sections import stage_params
    from stages import preview

    for method in stage_params("preview")["preview"].methods:
        preview.main([method])


PREVIEW = SimpleNamespace(main=_preview_every_method)
"""A stand-in stage for :func:`run_study`: the ``preview`` stage of every method of ``preview.methods`` (what
``dvc repro`` runs for the DVC ``foreach``)."""


def _evaluate_every_method() -> None:
    from pipeline.steps.sections import stage_params
    from stages import evaluate, evaluate_summary

    for method in stage_params("evaluate")["evaluate"].methods:
        evaluate.main([method])
    evaluate_summary.main()


EVALUATE = SimpleNamespace(main=_evaluate_every_method)
"""A stand-in stage for :func:`run_study`: the ``evaluate`` stage of every method of ``evaluate.methods``, then
``evaluate_summary`` (what ``dvc repro`` runs for the DVC ``foreach``)."""


@contextlib.contextmanager
def run_study(folder: Path, overrides: list[str], stages: Sequence[ModuleType | SimpleNamespace]) -> Iterator[Path]:
    """Compose ``params.yaml`` in ``folder`` from the real conf/ with ``overrides``, run each stage's ``main()``
    there in order and yield the folder; the working directory is ``folder`` until the block ends."""
    from pipeline.io.params import compose

    (folder / "params.yaml").write_text(compose(ROOT / "conf", overrides=overrides))
    previous = Path.cwd()
    os.chdir(folder)
    try:
        for stage in stages:
            stage.main()
        yield folder
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def every_method_study(folder: Path, model_dir: Path, changes: dict[str, object] | None = None) -> Iterator[Path]:
    """:func:`run_study` of generate -> label -> hstats -> pca -> supervised -> jacobian -> pullback -> evaluate
    on ``model_dir`` (:data:`TINY_STUDY` with :data:`EVERY_METHOD_STUDY` and ``changes``; the committed ToyFaces
    classifier labels). Skips the test when the committed classifier is absent."""
    from stages import generate, hstats, jacobian, label, pca, pullback, supervised

    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    overrides = tiny_study_overrides(model_dir, CLASSIFIER, {**EVERY_METHOD_STUDY, **(changes or {})})
    stages = (generate, label, hstats, pca, supervised, jacobian, pullback, EVALUATE)
    with run_study(folder, overrides, stages) as study:
        yield study


def assert_every_method_evaluated(folder: Path) -> None:
    """A study of :func:`every_method_study` wrote every method's directions and scored each direction."""
    for name in EVERY_METHOD:
        assert (folder / f"directions/{name}.safetensors").is_file(), name
    metrics = json.loads((folder / "metrics/evaluate.json").read_text())
    assert set(metrics["methods"]) == set(EVERY_METHOD)
    for method in EVERY_METHOD:
        assert 0.0 <= metrics["methods"][method]["mean_clean_flip"] <= 1.0
        details = json.loads((folder / f"plots/evaluate/{method}/judge.json").read_text())
        for entry in details["directions"]:
            sides = entry["sides"].values()
            assert sum(side["flip"]["n"] for side in sides) >= 1  # eligible samples on one side at least
            assert all(0.0 <= side["broken"]["low"] <= side["broken"]["high"] <= 1.0 for side in sides)
