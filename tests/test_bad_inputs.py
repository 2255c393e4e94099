"""The bad-input catalogue: every bad input stops with a one-line error naming its cause.

One parametrized case per row of :data:`CASES`. Each case asserts that the call raises the row's
``pipeline.io.errors`` class, that the message is one line (no newline, at most :data:`MAX_MESSAGE` characters)
containing every fragment of the row (the key, value or file at fault), and, where the call would write,
that nothing is left under the output's name (the path is absent or an empty folder: no partial file and no
temporary). Stage rows run the real entry points (``stages.generate``, ``stages.label``) in a temporary
workspace whose params.yaml is composed from ``conf/`` with tiny overrides. The catalogue, with what each
row prints, is listed at the bottom of this file (``pytest -s`` prints the messages too).
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf

import pipeline.io.files as checkpoint_module
from pipeline.classifiers import read_state_dict
from pipeline.data.hstats import select_extremes, threshold_groups
from pipeline.data.labels import write_labels
from pipeline.data.store import StoreError, StoreSpec
from pipeline.data.store_writing import generate_store
from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.inversion import invert_ddim, invert_edit_friendly
from pipeline.diffusion.models import DiffusionModel, load_model
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid, sample
from pipeline.directions import Directions, Origin, load_directions, save_directions
from pipeline.directions.format import Expected
from pipeline.directions.jacobian import jacobian_spectra, rectangle_mask
from pipeline.directions.pullback import local_basis, step_for_fraction
from pipeline.directions.supervised import supervised_directions
from pipeline.io.errors import ConfigError, ModelNotFoundError, NumericalError, PipelineError
from pipeline.io.params import compose, load_params, load_section
from pipeline.linalg import LinearOperator, SolverConfig, block_krylov_svd
from pipeline.steps.pullback import PullbackConfig
from stages import generate, label

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 400
TINY_OVERRIDES = [
    "sampler.steps=3",
    "sampler.batch_size=2",
    "generate.num_samples=4",
    "generate.shard_size=2",
    f"classifier.path={ROOT / 'models/toyfaces/classifier'}",
    "logging.wandb.mode=disabled",
    "device=cpu",
]
GENERATE_OUTPUTS = ("ws/data/samples", "ws/metrics/generate.json")
LABEL_OUTPUTS = ("ws/data/labels.csv", "ws/metrics/label.json")
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


SCORES_LOW = torch.full((6, 2), 0.1)
SCORES_HIGH = torch.full((6, 2), 0.9)
NAMES = ["smiling", "hat"]
SOLVER = SolverConfig(max_iterations=2)

# ---- the catalogue ----------------------------------------------------------------------------------------

CASES = [
    # unknown model id / missing or corrupt checkpoint
    Case("unknown_model_id_offline", lambda e: (_offline_hub(e), load_model("nobody/no-such-model", device="cpu")),
         ModelNotFoundError, ("'nobody/no-such-model'", "huggingface-cli download")),
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
         ConfigError, ("sampler.stepz", "'stepz'")),
    Case("params_wrong_type",
         lambda e: _section_from_file(e, "sampler", SamplerConfig, **{"sampler.steps": "many"}),
         ConfigError, ("sampler.steps", "'many'")),
    Case("params_not_yaml", lambda e: (e.tmp.joinpath("params.yaml").write_text("sampler: [1\n"),
                                       load_params(e.tmp / "params.yaml")),
         ConfigError, ("{tmp}/params.yaml", "not valid YAML")),
    Case("stage_generate_unknown_key", lambda e: _run_stage(e, generate, **{"generate.num_sample": 8}), ConfigError,
         ("generate.num_sample",), GENERATE_OUTPUTS),
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
]  # fmt: skip


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


# The catalogue: each row and the message it prints (wrapped here; every message is one line). <tmp> is the
# row's temporary folder, <tiny> the tiny model folder; `pytest -s tests/test_bad_inputs.py` prints the messages
# with the real paths.
#
# unknown_model_id_offline
#     ModelNotFoundError: the weights for 'nobody/no-such-model' are not available locally: download them once with
#     `huggingface-cli download nobody/no-such-model` on a machine with internet and set HF_HOME to that cache, or
#     pass a local model folder
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
#     `huggingface-cli download nobody/no-such-model` on a machine with internet and set HF_HOME to that cache, or
#     pass a local model folder
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
#     ConfigError: params: sampler.stepz: Key 'stepz' not in 'SamplerConfig'
# params_wrong_type
#     ConfigError: params: sampler.steps: Value 'many' of type 'str' could not be converted to Integer
# params_not_yaml
#     ConfigError: params file '<tmp>/params.yaml': not valid YAML (while parsing a flow sequence)
# stage_generate_unknown_key
#     ConfigError: params: generate.num_sample: Key 'num_sample' not in 'GenerateConfig'
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
