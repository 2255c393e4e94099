"""The bad-input catalogue: every bad input stops with a one-line error naming its cause.

One parametrized case per row of :data:`CASES`. Each case asserts that the call raises the row's
``pipeline.io.errors`` class, that the message is one line (no newline, at most :data:`MAX_MESSAGE` characters)
containing every fragment of the row (the key, value or file at fault), and, where the call would write,
that nothing is left under the output's name (the path is absent or an empty folder: no partial file and no
temporary). Stage rows run the real entry points (``stages.generate``, ``stages.label``, ``stages.preflight``)
in a temporary workspace whose params.yaml is composed from ``conf/`` with tiny overrides. The catalogue, with
what each row prints, is listed at the bottom of this file (``pytest -s`` prints the messages too).

:data:`COMMANDS` then runs entry points as a user does, ``python -m stages.<name>`` (and ``python -m
pipeline.io.params``) in subprocesses, all at once: each must exit non-zero with exactly one line on stderr,
``error: <message>``, and no traceback (``HSPACE_DEBUG=1`` brings it back). The last tests pin the preflight:
it passes on the tiny study with the same file every time, and the stages that start the expensive work wait
for it in dvc.yaml.
"""

from __future__ import annotations

import ast
import copy
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
import yaml
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf
from PIL import Image

import pipeline.io.files as checkpoint_module
from pipeline.classifiers import read_state_dict
from pipeline.data.hstats import select_extremes, threshold_groups
from pipeline.data.labels import write_labels
from pipeline.data.store import StoreError, StoreSpec
from pipeline.data.store_writing import generate_store
from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.inversion import invert_ddim, invert_edit_friendly
from pipeline.diffusion.loading import check_source
from pipeline.diffusion.models import DiffusionModel, load_model
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid, sample
from pipeline.directions import Directions, Origin, load_directions, save_directions
from pipeline.directions.format import Expected
from pipeline.directions.jacobian import jacobian_spectra
from pipeline.directions.masks import check_mask_classifier, rectangle_mask
from pipeline.directions.pullback import local_basis, step_for_fraction
from pipeline.directions.supervised import supervised_directions
from pipeline.editing.images import select_directions
from pipeline.evaluation.broken import BrokenConfig
from pipeline.io.artefacts import PREFLIGHT_CHECKS
from pipeline.io.errors import ConfigError, ModelNotFoundError, NumericalError, PipelineError
from pipeline.io.images import read_images
from pipeline.io.params import compose, load_params, load_section
from pipeline.linalg import LinearOperator, SolverConfig, block_krylov_svd
from pipeline.steps import edit as edit_step
from pipeline.steps import preflight as preflight_step
from pipeline.steps.jacobian import JacobianConfig
from pipeline.steps.pullback import PullbackConfig
from stages import generate, label, preflight

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 400
TINY_OVERRIDES = [
    "sampler.steps=3",
    "sampler.batch_size=2",
    "generate.num_samples=4",
    "generate.shard_size=2",
    f"classifier.path={ROOT / 'models/toyfaces/classifier'}",
    f"edit.inputs={ROOT / 'inputs/toyfaces'}",
    "logging.wandb.mode=disabled",
    "device=cpu",
]
GENERATE_OUTPUTS = ("ws/data/samples", "ws/metrics/generate.json")
LABEL_OUTPUTS = ("ws/data/labels.csv", "ws/metrics/label.json")
PREFLIGHT_OUTPUTS = ("ws/metrics/preflight.json",)
MASK_CHOICES = "mouth, eyes, hair, face, background, a rectangle [top, left, bottom, right] or an image file"
SPEC = StoreSpec(steps=2)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass
class Env:
    """What a case may use: a fresh temporary folder, monkeypatch, the tiny model (object, folder, UNet)
    and the params.yaml text composed from conf/ for that model."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    model: DiffusionModel
    model_dir: Path
    unet: UNet2DModel
    params_text: str


@dataclass(frozen=True)
class Case:
    """One row: ``run(env)`` must raise ``error`` with a one-line message containing every ``names``
    fragment (``{tmp}`` stands for the case's folder) and leave nothing under ``outputs`` (relative to it)."""

    name: str
    run: Callable[[Env], Any]
    error: type[PipelineError]
    names: tuple[str, ...]
    outputs: tuple[str, ...] = ()


# ---- helpers used by the rows -------------------------------------------------------------------------------


def _run_stage(env: Env, stage: Any, **overrides: Any) -> None:
    """Write ws/params.yaml (composed params with ``overrides``, dotted keys) and run ``stage.main()`` in ws."""
    params = OmegaConf.create(env.params_text)
    for key, value in overrides.items():
        OmegaConf.update(params, key, value, force_add=True)
    workspace = env.tmp / "ws"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(OmegaConf.to_yaml(params))
    env.monkeypatch.chdir(workspace)
    stage.main()


def _section_from_file(env: Env, key: str, schema: type, **overrides: Any) -> Any:
    """load_section of a params.yaml written to the case folder with ``overrides``."""
    params = OmegaConf.create(env.params_text)
    for dotted, value in overrides.items():
        OmegaConf.update(params, dotted, value, force_add=True)
    path = env.tmp / "params.yaml"
    path.write_text(OmegaConf.to_yaml(params))
    return load_section(key, schema, load_params(path))


def _offline_hub(env: Env) -> None:
    env.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(env.tmp / "empty_hf_cache"))


def _damaged_model(env: Env, file: str, keep: float) -> str:
    """A copy of the tiny model folder with ``file`` cut to ``keep`` of its bytes."""
    folder = env.tmp / "damaged_model"
    shutil.copytree(env.model_dir, folder)
    data = (folder / file).read_bytes()
    (folder / file).write_bytes(data[: int(len(data) * keep)])
    return str(folder)


def _damaged_classifier(env: Env) -> str:
    """A copy of the committed ToyFaces classifier folder with model.safetensors cut in half."""
    folder = env.tmp / "damaged_classifier"
    shutil.copytree(ROOT / "models/toyfaces/classifier", folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return str(folder)


def _nan_unet(env: Env) -> UNet2DModel:
    unet = copy.deepcopy(env.unet)
    with torch.no_grad():
        unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    return unet


def _with_unet(env: Env, unet: UNet2DModel) -> DiffusionModel:
    return DiffusionModel(unet=unet, scheduler=env.model.scheduler, model_id="tiny-broken", device=env.model.device,
                          dtype=env.model.dtype)  # fmt: skip


def _inf_from_timestep(env: Env, bad_timestep: int) -> DiffusionModel:
    """The tiny model, except that its output is inf at ``bad_timestep`` (finite at every other timestep)."""
    unet = copy.deepcopy(env.unet)
    current: dict[str, int] = {}

    def remember_timestep(module: Any, args: tuple, kwargs: dict) -> None:
        current["t"] = int(args[1] if len(args) > 1 else kwargs["timestep"])

    def poison(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return output + float("inf") if current.get("t") == bad_timestep else None

    unet.register_forward_pre_hook(remember_timestep, with_kwargs=True)
    unet.conv_out.register_forward_hook(poison)
    return _with_unet(env, unet)


def _nan_model_folder(env: Env) -> str:
    folder = env.tmp / "nan_model"
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.002)
    DDPMPipeline(unet=_nan_unet(env), scheduler=scheduler).save_pretrained(folder)
    return str(folder)


def _small_store(env: Env, model: DiffusionModel | None = None) -> None:
    generate_store(model or env.model, env.tmp / "store", [0, 1, 2], SPEC, shard_size=2, batch_size=2,
                   progress=False)  # fmt: skip


def _disk_full_while_writing(env: Env) -> None:
    """Path.write_bytes writes half of the shard's bytes, then the disk is full (as a real ENOSPC does)."""

    def write_half(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    env.monkeypatch.setattr(Path, "write_bytes", write_half)
    _small_store(env)


def _disk_full_on_rename(env: Env) -> None:
    def refuse(source: Any, destination: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))

    env.monkeypatch.setattr(checkpoint_module.os, "replace", refuse)
    _small_store(env)


def _disk_full_labels(env: Env) -> None:
    def refuse(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    env.monkeypatch.setattr(Path, "write_text", refuse)
    write_labels(env.tmp / "data/labels.csv", torch.arange(3), ["smiling"], torch.full((3, 1), 0.5))


def _directions_file(env: Env, model_id: str, h_shape: tuple[int, ...]) -> Path:
    path = env.tmp / "directions.safetensors"
    origin = Origin(model_id=model_id, hspace_location="after", sampler_steps=3)
    save_directions(path, Directions(torch.randn(2, 3, *h_shape), "pca_per_step", "h", ["pc0", "pc1"], origin))
    return path


def _truncated_directions(env: Env) -> None:
    path = _directions_file(env, env.model.model_id, (32, 8, 8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    load_directions(path)


def _matrix_operator(rows: int, columns: int) -> LinearOperator:
    matrix = torch.randn(rows, columns, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return LinearOperator(shape=(rows, columns), matmat=lambda v: matrix @ v, rmatmat=lambda u: matrix.T @ u)


def _noise(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _cached_hub_model(env: Env, repo_id: str, weights: bool) -> None:
    """Put the tiny model folder into an otherwise empty Hugging Face cache as the snapshot of ``repo_id`` (the
    layout ``hf download`` leaves), without its UNet weights unless ``weights``; the hub is offline."""
    _offline_hub(env)
    repo = env.tmp / "empty_hf_cache" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(env.model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    if not weights:
        (repo / "snapshots" / commit / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def _model_without_weights(env: Env) -> str:
    """A copy of the tiny model folder whose UNet weights are missing."""
    folder = env.tmp / "no_weights"
    shutil.copytree(env.model_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return str(folder)


def _text_model_folder(env: Env) -> str:
    """The tiny model folder with the files of a Stable Diffusion text encoder and tokenizer beside it (their
    contents never read: the preflight only looks at the layout)."""
    folder = env.tmp / "text_model"
    shutil.copytree(env.model_dir, folder)
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text("{}")
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer").mkdir()
    return str(folder)


SCORES_LOW = torch.full((6, 2), 0.1)
SCORES_HIGH = torch.full((6, 2), 0.9)
NAMES = ["smiling", "hat"]
SOLVER = SolverConfig(max_iterations=2)

# ---- the catalogue ----------------------------------------------------------------------------------------

CASES = [
    # unknown model id / missing or corrupt checkpoint
    Case("unknown_model_id_offline", lambda e: (_offline_hub(e), load_model("nobody/no-such-model", device="cpu")),
         ModelNotFoundError, ("'nobody/no-such-model'", "hf download nobody/no-such-model")),
    Case("not_a_model_id", lambda e: load_model("no such model", device="cpu"), ModelNotFoundError,
         ("'no such model'", "google/ddpm-ema-celebahq-256")),
    Case("missing_model_folder", lambda e: load_model(str(e.tmp / "missing"), device="cpu"), ModelNotFoundError,
         ("{tmp}/missing",)),
    Case("truncated_unet_safetensors",
         lambda e: load_model(_damaged_model(e, "unet/diffusion_pytorch_model.safetensors", 0.5), device="cpu"),
         ModelNotFoundError, ("{tmp}/damaged_model/unet", "diffusion_pytorch_model.safetensors", "truncated")),
    Case("corrupt_unet_config", lambda e: load_model(_damaged_model(e, "unet/config.json", 0.5), device="cpu"),
         ModelNotFoundError, ("{tmp}/damaged_model/unet/config.json", "not valid JSON")),
    Case("stage_generate_unknown_model_id",
         lambda e: (_offline_hub(e), _run_stage(e, generate, **{"model.source": "nobody/no-such-model"})),
         ModelNotFoundError, ("'nobody/no-such-model'",), GENERATE_OUTPUTS),
    # wrong image size for inversion
    Case("invert_ddim_wrong_size", lambda e: invert_ddim(e.model, torch.zeros(1, 3, 8, 8), DecodeSettings(3)),
         ConfigError,
         ("x0 shape (1, 3, 8, 8)", "(B, 3, 16, 16)")),
    Case("invert_edit_friendly_wrong_size",
         lambda e: invert_edit_friendly(e.model, torch.zeros(2, 3, 32, 32), DecodeSettings(3, eta=1.0)),
         ConfigError, ("x0 shape (2, 3, 32, 32)", "(B, 3, 16, 16)")),
    # unknown h location
    Case("unknown_h_location", lambda e: sample(e.model, [0], DecodeSettings(2, location="middle")), ConfigError,
         ("hspace location 'middle'", "'after'")),
    Case("stage_generate_unknown_h_location", lambda e: _run_stage(e, generate, **{"model.hspace_location": "mid"}),
         ConfigError, ("hspace location 'mid'",), GENERATE_OUTPUTS),
    # k > dimension
    Case("k_above_dimension_krylov", lambda e: block_krylov_svd(_matrix_operator(6, 4), 5), ConfigError,
         ("k 5", "[1, 4]", "6 x 4")),
    Case("k_above_dimension_jacobian_spectra",
         lambda e: jacobian_spectra(e.model, _noise((3, 16, 16)), None, steps=3, eta=0.0, location="after",
                                    step_indices=[0], k=1000, solver=SOLVER),
         ConfigError, ("k 1000", "[1, 768]")),
    Case("k_above_dimension_local_basis",
         lambda e: local_basis(e.model, _noise((3, 16, 16)), 1, steps=3, n=1000, location="after", solver=SOLVER),
         ConfigError, ("k 1000", "[1, 768]")),
    # empty or all-zero mask
    Case("all_zero_mask",
         lambda e: jacobian_spectra(e.model, _noise((3, 16, 16)), None, steps=3, eta=0.0, location="after",
                                    step_indices=[0], k=2, solver=SOLVER, mask=torch.zeros(1, 16, 16)),
         ConfigError, ("mask: empty",)),
    Case("empty_rectangle_mask", lambda e: rectangle_mask([0.5, 0.5, 0.52, 0.9], (3, 16, 16)), ConfigError,
         ("mask: empty",)),
    # timestep window / t_edit outside the schedule
    Case("edit_steps_outside_schedule",
         lambda e: sample(e.model, [0], DecodeSettings(3), delta_h=torch.zeros(3, 32, 8, 8), edit_steps=[1, 5]),
         ConfigError,
         ("edit_steps index 5", "[0, 3)")),
    Case("steps_beyond_training_schedule", lambda e: sample(e.model, [0], DecodeSettings(2000)), ConfigError,
         ("steps 2000", "[1, 1000]")),
    Case("t_edit_fraction_outside_schedule", lambda e: step_for_fraction(ddim_grid(e.model.scheduler, 5), 1.5, 1000),
         ConfigError, ("t 1.5", "t_edit outside")),
    Case("t_edit_step_outside_grid",
         lambda e: local_basis(e.model, _noise((3, 16, 16)), 7, steps=5, n=2, location="after", solver=SOLVER),
         ConfigError, ("step 7", "t_edit outside", "[0, 5)")),
    Case("t_edit_in_params", lambda e: PullbackConfig(edit_t=1.5), ConfigError,
         ("directions.pullback.edit_t=1.5", "t_edit outside")),
    # eta outside [0, 1]
    Case("eta_above_one", lambda e: sample(e.model, [0], DecodeSettings(2, eta=1.5)), ConfigError,
         ("eta 1.5", "[0, 1]")),
    Case("eta_in_store_spec", lambda e: StoreSpec(steps=2, eta=-0.1), ConfigError, ("eta -0.1", "[0, 1]")),
    Case("stage_generate_eta_below_zero", lambda e: _run_stage(e, generate, **{"sampler.eta": -0.1}), ConfigError,
         ("sampler.eta=-0.1", "[0, 1]"), GENERATE_OUTPUTS),
    # a label set without positive or negative examples
    Case("no_positive_examples", lambda e: threshold_groups(SCORES_LOW, 0.5, NAMES), ConfigError,
         ("attribute 'smiling'", "positive group empty")),
    Case("no_negative_examples", lambda e: threshold_groups(SCORES_HIGH, 0.5, NAMES), ConfigError,
         ("attribute 'smiling'", "negative group empty")),
    Case("no_examples_for_top_k", lambda e: select_extremes(SCORES_LOW, 2, NAMES), ConfigError,
         ("attribute 'smiling'", "no positive or negative examples")),
    Case("supervised_without_negative_mean",
         lambda e: supervised_directions({"smiling": torch.zeros(3)}, {}, Origin(model_id="m"), space="x_T"),
         ConfigError, ("['smiling']", "negative mean")),
    # NaN / inf in the model output
    Case("nan_in_unet_output", lambda e: sample(_with_unet(e, _nan_unet(e)), [0], DecodeSettings(3)), NumericalError,
         ("timestep 666", "NaN or inf")),
    Case("inf_in_unet_output_at_a_later_timestep", lambda e: sample(_inf_from_timestep(e, 333), [0], DecodeSettings(3)),
         NumericalError, ("timestep 333", "step 1 of 3", "NaN or inf")),
    Case("nan_while_generating_a_store", lambda e: _small_store(e, _with_unet(e, _nan_unet(e))), NumericalError,
         ("timestep 500", "NaN or inf"), ("store",)),
    Case("stage_generate_nan_model", lambda e: _run_stage(e, generate, **{"model.source": _nan_model_folder(e)}),
         NumericalError, ("timestep 666",), GENERATE_OUTPUTS),
    # a directions file from another model
    Case("directions_from_another_model",
         lambda e: load_directions(_directions_file(e, "google/ddpm-ema-church-256", (32, 8, 8)),
                                   Expected(model_id=e.model.model_id)),
         ConfigError, ("{tmp}/directions.safetensors", "'google/ddpm-ema-church-256'", "model_id")),
    Case("directions_of_another_h_shape",
         lambda e: load_directions(_directions_file(e, e.model.model_id, (16, 4, 4)), Expected(h_shape=(32, 8, 8))),
         ConfigError, ("{tmp}/directions.safetensors", "h_shape (16, 4, 4)", "(32, 8, 8)")),
    Case("directions_file_truncated", _truncated_directions, ConfigError,
         ("{tmp}/directions.safetensors", "truncated")),
    Case("delta_h_of_the_wrong_shape",
         lambda e: sample(e.model, [0], DecodeSettings(3), delta_h=torch.zeros(3, 16, 8, 8)),
         ConfigError, ("delta_h shape (3, 16, 8, 8)", "(3, 32, 8, 8)")),
    # params.yaml with an unknown key or a wrong type
    Case("params_unknown_key", lambda e: _section_from_file(e, "sampler", SamplerConfig, **{"sampler.stepz": 3}),
         ConfigError, ("params: sampler.stepz: unknown key; did you mean 'steps'?",)),
    Case("params_unknown_nested_key",
         lambda e: _section_from_file(e, "directions.jacobian", JacobianConfig,
                                      **{"directions.jacobian.solver.max_iteration": 4}),
         ConfigError,
         ("params: directions.jacobian.solver.max_iteration: unknown key; did you mean 'max_iterations'?",)),
    Case("params_unknown_key_without_a_close_one",
         lambda e: _section_from_file(e, "sampler", SamplerConfig, **{"sampler.quality": "high"}),
         ConfigError, ("params: sampler.quality: unknown key; expected one of batch_size, eta, injection, steps",)),
    Case("compose_unknown_key", lambda e: compose(ROOT / "conf", overrides=["directions.pca.n_componets=4"]),
         ConfigError, ("params: directions.pca.n_componets: unknown key; did you mean 'n_components'?",)),
    Case("compose_unknown_section", lambda e: compose(ROOT / "conf", overrides=["directions.pcaa.n_components=4"]),
         ConfigError, ("params: directions.pcaa: unknown key; did you mean 'pca'?",)),
    Case("compose_unknown_group_option", lambda e: compose(ROOT / "conf", overrides=["model=ddpm_celebaq"]),
         ConfigError, ("conf: model=ddpm_celebaq: no such option; did you mean 'ddpm_celebahq'?",)),
    Case("params_wrong_type",
         lambda e: _section_from_file(e, "sampler", SamplerConfig, **{"sampler.steps": "many"}),
         ConfigError, ("sampler.steps", "'many'")),
    Case("params_not_yaml", lambda e: (e.tmp.joinpath("params.yaml").write_text("sampler: [1\n"),
                                       load_params(e.tmp / "params.yaml")),
         ConfigError, ("{tmp}/params.yaml", "not valid YAML")),
    Case("stage_generate_unknown_key", lambda e: _run_stage(e, generate, **{"generate.num_sample": 8}), ConfigError,
         ("params: generate.num_sample: unknown key; did you mean 'num_samples'?",), GENERATE_OUTPUTS),
    Case("stage_generate_wrong_type", lambda e: _run_stage(e, generate, **{"generate.shard_size": "big"}),
         ConfigError, ("generate.shard_size", "'big'"), GENERATE_OUTPUTS),
    # disk full when writing (simulated)
    Case("disk_full_writing_a_shard", _disk_full_while_writing, PipelineError,
         ("{tmp}/store/shard-00000.safetensors", "No space left on device"), ("store",)),
    Case("disk_full_publishing_a_shard", _disk_full_on_rename, PipelineError,
         ("{tmp}/store/shard-00000.safetensors", "No space left on device"), ("store",)),
    Case("disk_full_writing_labels", _disk_full_labels, PipelineError,
         ("{tmp}/data/labels.csv", "No space left on device"), ("data",)),
    # the label stage and its classifier
    Case("stage_label_unknown_classifier", lambda e: _run_stage(e, label, **{"classifier.name": "resnet"}),
         ConfigError, ("classifier.name 'resnet'", "toyfaces"), LABEL_OUTPUTS),
    Case("stage_label_missing_classifier_folder",
         lambda e: _run_stage(e, label, **{"classifier.path": str(e.tmp / "no_classifier")}),
         ModelNotFoundError, ("{tmp}/no_classifier",), LABEL_OUTPUTS),
    Case("stage_label_truncated_classifier_weights",
         lambda e: _run_stage(e, label, **{"classifier.path": _damaged_classifier(e)}),
         ModelNotFoundError, ("{tmp}/damaged_classifier", "unreadable"), LABEL_OUTPUTS),
    Case("stage_label_without_samples", lambda e: _run_stage(e, label), StoreError, ("data/samples",), LABEL_OUTPUTS),
    Case("classifier_weights_unreadable",
         lambda e: (e.tmp.joinpath("w.pt").write_bytes(b"not a checkpoint"), read_state_dict(e.tmp / "w.pt")),
         ModelNotFoundError, ("{tmp}/w.pt", "unreadable")),
    # other configuration values of the generate and label stages
    Case("stage_generate_unknown_device", lambda e: _run_stage(e, generate, device="tpu"), ConfigError,
         ("device 'tpu'",), GENERATE_OUTPUTS),
    Case("stage_label_unknown_wandb_mode", lambda e: _run_stage(e, label, **{"logging.wandb.mode": "loud"}),
         ConfigError, ("logging.wandb.mode 'loud'",), LABEL_OUTPUTS),
    # the Jacobian mask, checked with the config (no model loaded)
    Case("jacobian_mask_unknown_region", lambda e: JacobianConfig(mask="nose"), ConfigError,
         (f"directions.jacobian.mask 'nose': unknown region; expected one of {MASK_CHOICES}",)),
    Case("jacobian_mask_missing_image_file", lambda e: JacobianConfig(mask=str(e.tmp / "masks/mouth.png")),
         ConfigError, ("directions.jacobian.mask '{tmp}/masks/mouth.png': no such image file",)),
    Case("jacobian_mask_reversed_rectangle", lambda e: JacobianConfig(mask=[0.8, 0.2, 0.4, 0.9]), ConfigError,
         ("directions.jacobian.mask [0.8, 0.2, 0.4, 0.9]", "top < bottom")),
    Case("jacobian_region_mask_with_another_classifier", lambda e: check_mask_classifier("mouth", "celeba_attributes"),
         ConfigError, ("directions.jacobian.mask 'mouth'", "classifier.name 'toyfaces', not 'celeba_attributes'")),
    # the preflight: every resource the run needs, before generate, without loading anything
    Case("preflight_model_not_in_the_hf_cache",
         lambda e: (_offline_hub(e), check_source("google/ddpm-ema-celebahq-256")),
         ModelNotFoundError, ("model.source 'google/ddpm-ema-celebahq-256'", "not in the local Hugging Face cache",
                              "hf download google/ddpm-ema-celebahq-256")),
    Case("preflight_cached_model_without_weights",
         lambda e: (_cached_hub_model(e, "owner/tiny", weights=False), check_source("owner/tiny")),
         ModelNotFoundError, ("model.source 'owner/tiny'", "no weights in unet", "hf download owner/tiny")),
    Case("preflight_model_folder_without_weights", lambda e: check_source(_model_without_weights(e)),
         ModelNotFoundError, ("model.source '{tmp}/no_weights'", "no weights in unet")),
    Case("stage_preflight_real_model_not_downloaded",
         lambda e: (_offline_hub(e), _run_stage(e, preflight, **{"model.source": "google/ddpm-ema-celebahq-256"})),
         ModelNotFoundError, ("model.source 'google/ddpm-ema-celebahq-256'", "not in the local Hugging Face cache",
                              "hf download google/ddpm-ema-celebahq-256"), PREFLIGHT_OUTPUTS),
    Case("stage_preflight_missing_classifier",
         lambda e: _run_stage(e, preflight, **{"classifier.path": str(e.tmp / "no_classifier")}),
         ModelNotFoundError, ("classifier.path '{tmp}/no_classifier'",), PREFLIGHT_OUTPUTS),
    Case("stage_preflight_text_model_without_prompts",
         lambda e: _run_stage(e, preflight, **{"model.source": _text_model_folder(e)}),
         ConfigError, ("params: model.text: missing", "text-conditioned", "model.text.prompt"), PREFLIGHT_OUTPUTS),
    Case("stage_preflight_prompts_for_an_unconditional_model",
         lambda e: _run_stage(e, preflight, **{"model.text": {"prompt": "a face"}}),
         ConfigError, ("params: model.text", "not text-conditioned"), PREFLIGHT_OUTPUTS),
    Case("stage_preflight_steps_beyond_the_schedule", lambda e: _run_stage(e, preflight, **{"sampler.steps": 2000}),
         ConfigError, ("params: sampler.steps=2000: must be <= 1000",), PREFLIGHT_OUTPUTS),
    Case("stage_preflight_unknown_key_in_a_later_section",
         lambda e: _run_stage(e, preflight, **{"directions.supervised.estimater": "mean_difference"}),
         ConfigError, ("params: directions.supervised.estimater: unknown key; did you mean 'estimator'?",),
         PREFLIGHT_OUTPUTS),
    Case("stage_preflight_edit_inputs_missing",
         lambda e: _run_stage(e, preflight, **{"edit.inputs": str(e.tmp / "my_photos")}),
         ConfigError, ("params: edit.inputs: input '{tmp}/my_photos': no such file or folder",), PREFLIGHT_OUTPUTS),
    # editing one's own images: files the model cannot serve, names the file does not have
    Case("edit_image_of_another_aspect_ratio",
         lambda e: read_images([_wide_image(e)], (32, 32)),
         ConfigError, ("image '{tmp}/wide.png': 64x32 pixels", "the model makes 32x32", "edit.crop=center")),
    Case("edit_unknown_direction_name",
         lambda e: select_directions(_supervised_file(), ["nose"], 4),
         ConfigError, ("edit.names ['nose']", "not in the supervised file", "smiling")),
    Case("edit_folder_of_unreadable_images",  # one unreadable file among good ones is skipped; all: the first's error
         lambda e: edit_step.run(e.model, None, _supervised_file(), edit_step.EditConfig(inputs=_unreadable_folder(e)),
                                 SamplerConfig(), BrokenConfig()),
         ConfigError, ("image '{tmp}/photos/a.png': not an image that can be read",)),
]  # fmt: skip


def _wide_image(env: Env) -> Path:
    path = env.tmp / "wide.png"
    Image.new("RGB", (64, 32)).save(path)
    return path


def _unreadable_folder(env: Env) -> str:
    """A folder of two image files that cannot be read (random bytes)."""
    folder = env.tmp / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(bytes(range(256)))
    return str(folder)


def _supervised_file() -> Directions:
    return Directions(torch.zeros((2, 2, 4)), "supervised", "h", ["smiling", "hat"], Origin("m", "after", 2))


@pytest.fixture(scope="module")
def params_text(tiny_model_dir: Path) -> str:
    return compose(ROOT / "conf", overrides=[f"model.source={tiny_model_dir}", *TINY_OVERRIDES])


def test_the_catalogue_has_at_least_14_distinct_rows() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) >= 14


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_raises_one_line_naming_the_cause(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: DiffusionModel,
    tiny_model_dir: Path,
    tiny_unet: UNet2DModel,
    params_text: str,
) -> None:
    env = Env(tmp_path, monkeypatch, tiny_model, tiny_model_dir, tiny_unet, params_text)
    with pytest.raises(case.error) as raised:
        case.run(env)
    monkeypatch.undo()  # restore patched writers and the working directory before inspecting the files
    assert isinstance(raised.value, PipelineError)
    message = str(raised.value)
    print(f"{case.name}: {type(raised.value).__name__}: {message}")
    assert "\n" not in message and "\r" not in message and 0 < len(message) <= MAX_MESSAGE, message
    for fragment in case.names:
        assert fragment.format(tmp=tmp_path) in message, (fragment, message)
    for output in case.outputs:
        path = tmp_path / output
        assert not path.exists() or (path.is_dir() and not any(path.iterdir())), (
            f"{output}: {sorted(p.name for p in path.rglob('*'))}"
        )



# ---- entry points as a user runs them: one line on stderr, no traceback ---------------------------------------


@dataclass(frozen=True)
class Command:
    """``python -m <module> <args>`` run in a fresh workspace whose params.yaml is composed from conf/ with
    ``overrides`` (none written when ``overrides`` is None); it must fail with exactly one stderr line, ``error: ``
    followed by a message containing every ``names`` fragment (``{ws}`` stands for the workspace), and leave
    ``outputs`` (relative to the workspace) absent."""

    name: str
    module: str
    overrides: tuple[str, ...] | None
    names: tuple[str, ...]
    args: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def _tiny(*overrides: str) -> tuple[str, ...]:
    return ("model.source={tiny}", *TINY_OVERRIDES, *overrides)


COMMANDS = [
    Command("stage_generate_negative_num_samples", "stages.generate", _tiny("generate.num_samples=-5"),
            ("params: generate.num_samples=-5: must be >=",), outputs=("data/samples", "metrics/generate.json")),
    Command("params_compose_unknown_key", "pipeline.io.params", None,
            ("params: directions.pca.n_componets: unknown key; did you mean 'n_components'?",),
            args=("directions.pca.n_componets=4", "--conf-dir", str(ROOT / "conf"), "--out", "params.yaml"),
            outputs=("params.yaml",)),
    Command("stage_jacobian_unknown_mask_region", "stages.jacobian", _tiny("directions.jacobian.mask=nose"),
            (f"directions.jacobian.mask 'nose': unknown region; expected one of {MASK_CHOICES}",),
            outputs=("directions/jacobian.safetensors", "metrics/jacobian.json")),
    Command("params_compose_unknown_key_debug", "pipeline.io.params", None,
            ("params: directions.pca.n_componets: unknown key; did you mean 'n_components'?",),
            args=("directions.pca.n_componets=4", "--conf-dir", str(ROOT / "conf"), "--out", "params.yaml"),
            env=(("HSPACE_DEBUG", "1"),)),
]  # fmt: skip
"""The entry points run as subprocesses (the stages' messages of the preflight are pinned in-process, in
:data:`CASES`, since every stage prints through the same ``run_main``); the last one (HSPACE_DEBUG=1) must show
its traceback instead."""


@pytest.fixture(scope="module")
def command_results(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run every :data:`COMMANDS` entry at once (each process mostly imports torch and diffusers); name ->
    (workspace, finished process)."""
    empty_cache = tmp_path_factory.mktemp("empty_hf_cache")
    running = {}
    for command in COMMANDS:
        workspace = tmp_path_factory.mktemp(command.name)
        if command.overrides is not None:
            overrides = [item.format(tiny=tiny_model_dir) for item in command.overrides]
            (workspace / "params.yaml").write_text(compose(ROOT / "conf", overrides=overrides))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty_cache),
               "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "HSPACE_DEBUG": "", **dict(command.env)}  # fmt: skip
        argv = [sys.executable, "-m", command.module, *command.args]
        process = subprocess.Popen(argv, cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        running[command.name] = (workspace, argv, process)
    results = {}
    for name, (workspace, argv, process) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (workspace, subprocess.CompletedProcess(argv, process.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize("command", COMMANDS[:-1], ids=[command.name for command in COMMANDS[:-1]])
def test_entry_point_prints_one_line_without_traceback(
    command: Command, command_results: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]
) -> None:
    workspace, result = command_results[command.name]
    print(f"{command.name}: {result.stderr.strip()}")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in command.names:
        assert fragment.format(ws=workspace) in lines[0], (fragment, lines[0])
    for output in command.outputs:
        assert not (workspace / output).exists(), output


def test_hspace_debug_shows_the_traceback(
    command_results: dict[str, tuple[Path, subprocess.CompletedProcess[str]]],
) -> None:
    command = COMMANDS[-1]
    _, result = command_results[command.name]
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.io.errors.ConfigError: ") and command.names[0] in last, last


def test_every_entry_point_runs_through_run_main() -> None:
    """Each stages/*.py ends with ``if __name__ == "__main__": run_main(main)``."""
    for path in sorted((ROOT / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        last = ast.parse(path.read_text()).body[-1]
        assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'", path.name
        assert [ast.unparse(node) for node in last.body] == ["run_main(main)"], path.name


# ---- the preflight in the DAG ---------------------------------------------------------------------------------


def test_preflight_passes_on_the_tiny_study_with_the_same_file_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_text: str
) -> None:
    """Its output lists the checks, never a value or a time, so rerunning it leaves later stages up to date."""
    (tmp_path / "params.yaml").write_text(params_text)
    monkeypatch.chdir(tmp_path)
    preflight.main()
    first = (tmp_path / PREFLIGHT_CHECKS).read_bytes()
    preflight.main()
    assert (tmp_path / PREFLIGHT_CHECKS).read_bytes() == first
    assert json.loads(first) == preflight_step.CHECKS


def test_the_expensive_stages_wait_for_the_preflight() -> None:
    """generate (and through it every stage of samples, labels and directions) and the two direction stages that
    need no samples depend on the preflight's output; the preflight itself depends only on committed models."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outputs = {next(iter(entry)) if isinstance(entry, dict) else entry for entry in stages["preflight"]["outs"]}
    assert outputs == {PREFLIGHT_CHECKS}
    for name in ("generate", "jacobian", "pullback"):
        assert PREFLIGHT_CHECKS in stages[name]["deps"], name
    produced = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for name, stage in stages.items()
        if name not in ("train_toy_model", "train_toy_classifier")
        for entry in stage.get("outs", []) + stage.get("metrics", [])
    }
    assert not produced & set(stages["preflight"]["deps"])
    assert tuple(stages["preflight"]["params"]) == preflight_step.PARAMS

# The catalogue: each row and the message it prints (wrapped here; every message is one line). <tmp> is the
# row's temporary folder, <tiny> the tiny model folder; `pytest -s tests/test_bad_inputs.py` prints the messages
# with the real paths.
#
# unknown_model_id_offline
#     ModelNotFoundError: the weights for 'nobody/no-such-model' are not available locally: download them once with
#     `hf download nobody/no-such-model` on a machine with internet and set HF_HOME to that cache, or pass a local
#     model folder
# not_a_model_id
#     ModelNotFoundError: model source 'no such model': no such folder and not a hub id 'owner/name'; known ids:
#     google/ddpm-ema-celebahq-256, google/ddpm-ema-church-256, google/ddpm-ema-bedroom-256, google/ddpm-ema-cat-256,
#     google/ddpm-cifar10-32
# missing_model_folder
#     ModelNotFoundError: model source '<tmp>/missing': no such folder and not a hub id 'owner/name'; known ids:
#     google/ddpm-ema-celebahq-256, google/ddpm-ema-church-256, google/ddpm-ema-bedroom-256, google/ddpm-ema-cat-256,
#     google/ddpm-cifar10-32
# truncated_unet_safetensors
#     ModelNotFoundError: model folder '<tmp>/damaged_model/unet': UNet weights diffusion_pytorch_model.safetensors
#     are unreadable (truncated or corrupt file); save or download the model again
# corrupt_unet_config
#     ModelNotFoundError: model config '<tmp>/damaged_model/unet/config.json': not valid JSON (Expecting value: line
#     22 column 16 (char 464))
# stage_generate_unknown_model_id
#     ModelNotFoundError: the weights for 'nobody/no-such-model' are not available locally: download them once with
#     `hf download nobody/no-such-model` on a machine with internet and set HF_HOME to that cache, or pass a local
#     model folder
# invert_ddim_wrong_size
#     ConfigError: x0 shape (1, 3, 8, 8): expected (B, 3, 16, 16)
# invert_edit_friendly_wrong_size
#     ConfigError: x0 shape (2, 3, 32, 32): expected (B, 3, 16, 16)
# unknown_h_location
#     ConfigError: hspace location 'middle': unknown; expected 'after', 'before', 'down_blocks.0'..'down_blocks.1',
#     'up_blocks.0'..'up_blocks.1'
# stage_generate_unknown_h_location
#     ConfigError: hspace location 'mid': unknown; expected 'after', 'before', 'down_blocks.0'..'down_blocks.1',
#     'up_blocks.0'..'up_blocks.1'
# k_above_dimension_krylov
#     ConfigError: k 5: must be an integer in [1, min(m, d)] = [1, 4] for an operator of shape 6 x 4
# k_above_dimension_jacobian_spectra
#     ConfigError: k 1000: must be an integer in [1, min(m, d)] = [1, 768] for an operator of shape 768 x 2048
# k_above_dimension_local_basis
#     ConfigError: k 1000: must be an integer in [1, min(m, d)] = [1, 768] for an operator of shape 2048 x 768
# all_zero_mask
#     ConfigError: mask: empty (no pixel inside the region)
# empty_rectangle_mask
#     ConfigError: mask: empty (no pixel inside the region)
# edit_steps_outside_schedule
#     ConfigError: edit_steps index 5: outside [0, 3) for steps=3
# steps_beyond_training_schedule
#     ConfigError: steps 2000: must be an integer in [1, 1000] (num_train_timesteps)
# t_edit_fraction_outside_schedule
#     ConfigError: t 1.5: must be a fraction of the schedule in [0, 1] (t_edit outside it)
# t_edit_step_outside_grid
#     ConfigError: step 7: t_edit outside the schedule's grid [0, 5)
# t_edit_in_params
#     ConfigError: params: directions.pullback.edit_t=1.5: t_edit outside the schedule [0, 1]
# eta_above_one
#     ConfigError: eta 1.5: outside [0, 1]
# eta_in_store_spec
#     ConfigError: eta -0.1: outside [0, 1]
# stage_generate_eta_below_zero
#     ConfigError: params: sampler.eta=-0.1: must be in [0, 1]
# no_positive_examples
#     ConfigError: attribute 'smiling': no sample scores above 0.5; positive group empty
# no_negative_examples
#     ConfigError: attribute 'smiling': no sample scores below 0.5; negative group empty
# no_examples_for_top_k
#     ConfigError: attribute 'smiling': all 6 scores equal 0.1; no positive or negative examples
# supervised_without_negative_mean
#     ConfigError: attributes ['smiling']: must have both a positive and a negative mean
# nan_in_unet_output
#     NumericalError: UNet output at timestep 666 (step 0 of 3) contains NaN or inf
# inf_in_unet_output_at_a_later_timestep
#     NumericalError: UNet output at timestep 333 (step 1 of 3) contains NaN or inf
# nan_while_generating_a_store
#     NumericalError: UNet output at timestep 500 (step 0 of 2) contains NaN or inf
# stage_generate_nan_model
#     NumericalError: UNet output at timestep 666 (step 0 of 3) contains NaN or inf
# directions_from_another_model
#     ConfigError: directions file <tmp>/directions.safetensors was made for model_id 'google/ddpm-ema-church-256',
#     not '<tiny>'
# directions_of_another_h_shape
#     ConfigError: directions file <tmp>/directions.safetensors was made for h_shape (16, 4, 4), not (32, 8, 8)
# directions_file_truncated
#     ConfigError: directions file <tmp>/directions.safetensors: unreadable or truncated (Error while deserializing
#     header: incomplete metadata, file not fully covered)
# delta_h_of_the_wrong_shape
#     ConfigError: delta_h shape (3, 16, 8, 8): expected (3, 32, 8, 8) or (1, 3, 32, 8, 8) (T=3 steps, h at 'after')
# params_unknown_key
#     ConfigError: params: sampler.stepz: unknown key; did you mean 'steps'?
# params_unknown_nested_key
#     ConfigError: params: directions.jacobian.solver.max_iteration: unknown key; did you mean 'max_iterations'?
# params_unknown_key_without_a_close_one
#     ConfigError: params: sampler.quality: unknown key; expected one of batch_size, eta, injection, steps
# compose_unknown_key
#     ConfigError: params: directions.pca.n_componets: unknown key; did you mean 'n_components'?
# compose_unknown_section
#     ConfigError: params: directions.pcaa: unknown key; did you mean 'pca'?
# compose_unknown_group_option
#     ConfigError: conf: model=ddpm_celebaq: no such option; did you mean 'ddpm_celebahq'?
# params_wrong_type
#     ConfigError: params: sampler.steps: Value 'many' of type 'str' could not be converted to Integer
# params_not_yaml
#     ConfigError: params file '<tmp>/params.yaml': not valid YAML (while parsing a flow sequence)
# stage_generate_unknown_key
#     ConfigError: params: generate.num_sample: unknown key; did you mean 'num_samples'?
# stage_generate_wrong_type
#     ConfigError: params: generate.shard_size: Value 'big' of type 'str' could not be converted to Integer
# disk_full_writing_a_shard
#     OutputWriteError: [Errno 28] output '<tmp>/store/shard-00000.safetensors': No space left on device; nothing was
#     written under that name
# disk_full_publishing_a_shard
#     OutputWriteError: [Errno 28] output '<tmp>/store/shard-00000.safetensors': No space left on device; nothing was
#     written under that name
# disk_full_writing_labels
#     OutputWriteError: [Errno 28] output '<tmp>/data/labels.csv': No space left on device; nothing was written under
#     that name
# stage_label_unknown_classifier
#     ConfigError: classifier.name 'resnet': unknown; expected one of toyfaces, celeba_attributes
# stage_label_missing_classifier_folder
#     ModelNotFoundError: classifier folder '<tmp>/no_classifier': missing config.json or model.safetensors
# stage_label_truncated_classifier_weights
#     ModelNotFoundError: classifier folder '<tmp>/damaged_classifier': unreadable (Error while deserializing header:
#     incomplete metadata, file not fully covered)
# stage_label_without_samples
#     StoreError: samples store 'data/samples': no such folder
# classifier_weights_unreadable
#     ModelNotFoundError: classifier weights '<tmp>/w.pt': unreadable (not a plain state dict; the weights-only loader
#     refused it: Unsupported operand 110)
# stage_generate_unknown_device
#     ConfigError: device 'tpu': unknown; expected 'auto', 'cpu', 'cuda' or 'cuda:N'
# stage_label_unknown_wandb_mode
#     ConfigError: logging.wandb.mode 'loud': unknown; expected one of auto, disabled, offline, online
# jacobian_mask_unknown_region
#     ConfigError: directions.jacobian.mask 'nose': unknown region; expected one of mouth, eyes, hair, face,
#     background, a rectangle [top, left, bottom, right] or an image file
# jacobian_mask_missing_image_file
#     ConfigError: directions.jacobian.mask '<tmp>/masks/mouth.png': no such image file (expected one of mouth, eyes,
#     hair, face, background, a rectangle [top, left, bottom, right] or an image file)
# jacobian_mask_reversed_rectangle
#     ConfigError: directions.jacobian.mask [0.8, 0.2, 0.4, 0.9]: a rectangle [top, left, bottom, right] needs
#     fractions of the image in [0, 1] with top < bottom and left < right
# jacobian_region_mask_with_another_classifier
#     ConfigError: directions.jacobian.mask 'mouth': a ToyFaces region needs classifier.name 'toyfaces', not
#     'celeba_attributes'; set the mask to a rectangle [top, left, bottom, right], an image file or null
# preflight_model_not_in_the_hf_cache
#     ModelNotFoundError: model.source 'google/ddpm-ema-celebahq-256': not in the local Hugging Face cache
#     (<tmp>/empty_hf_cache); download the model with `hf download google/ddpm-ema-celebahq-256` on a machine with
#     internet (and set HF_HOME to that cache)
# preflight_cached_model_without_weights
#     ModelNotFoundError: model.source 'owner/tiny': no weights in unet (expected
#     diffusion_pytorch_model.safetensors or diffusion_pytorch_model.safetensors.index.json); download the model
#     with `hf download owner/tiny` on a machine with internet (and set HF_HOME to that cache)
# preflight_model_folder_without_weights
#     ModelNotFoundError: model.source '<tmp>/no_weights': no weights in unet (expected
#     diffusion_pytorch_model.safetensors or diffusion_pytorch_model.safetensors.index.json); set model.source to a
#     saved diffusers model folder or a hub id
# stage_preflight_real_model_not_downloaded
#     ModelNotFoundError: model.source 'google/ddpm-ema-celebahq-256': not in the local Hugging Face cache
#     (<tmp>/empty_hf_cache); download the model with `hf download google/ddpm-ema-celebahq-256` on a machine with
#     internet (and set HF_HOME to that cache)
# stage_preflight_missing_classifier
#     ModelNotFoundError: classifier.path '<tmp>/no_classifier': no ToyFaces classifier there (config.json and
#     model.safetensors); train it with: dvc repro train_toy_classifier
# stage_preflight_text_model_without_prompts
#     ConfigError: params: model.text: missing; model '<tmp>/text_model' is text-conditioned (a Stable Diffusion
#     pipeline): set model.text.prompt (see conf/model/sd15.yaml)
# stage_preflight_prompts_for_an_unconditional_model
#     ConfigError: params: model.text: model '<tiny>' is not text-conditioned; remove model.text
# stage_preflight_steps_beyond_the_schedule
#     ConfigError: params: sampler.steps=2000: must be <= 1000, the training schedule of model '<tiny>'
# stage_preflight_unknown_key_in_a_later_section
#     ConfigError: params: directions.supervised.estimater: unknown key; did you mean 'estimator'?
# edit_folder_of_unreadable_images
#     ConfigError: image '<tmp>/photos/a.png': not an image that can be read (UnidentifiedImageError)
#
# The subprocess commands (COMMANDS) print on stderr, alone:
#
# stage_generate_negative_num_samples (python -m stages.generate)
#     error: params: generate.num_samples=-5: must be >= 2
# params_compose_unknown_key (python -m pipeline.io.params directions.pca.n_componets=4 --out params.yaml)
#     error: params: directions.pca.n_componets: unknown key; did you mean 'n_components'?
# stage_jacobian_unknown_mask_region (python -m stages.jacobian)
#     error: directions.jacobian.mask 'nose': unknown region; expected one of mouth, eyes, hair, face, background, a
#     rectangle [top, left, bottom, right] or an image file
