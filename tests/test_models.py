"""Tests for pipeline.diffusion.models: local pipeline and bare folders, hub-id errors, device and dtype names."""

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from pipeline.diffusion.loading import DEFAULT_TRAIN_SCHEDULE
from pipeline.diffusion.models import load_model, resolve_device, resolve_dtype, study_clip_sample
from pipeline.io.errors import ConfigError, ModelNotFoundError

pytestmark = pytest.mark.usefixtures("single_thread")


def _eps(unet: UNet2DModel) -> torch.Tensor:
    x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return unet(x, 500).sample


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_pipeline_folder_loads_same_unet_and_ddim_scheduler(
    tiny_unet: UNet2DModel, tiny_model_dir: Path
) -> None:
    model = load_model(str(tiny_model_dir), device="cpu")

    assert torch.allclose(_eps(model.unet), _eps(tiny_unet), atol=1e-5)
    assert isinstance(model.scheduler, DDIMScheduler)
    assert model.scheduler.config.clip_sample is True  # unknown to the study: the folder's own scheduler setting
    assert model.scheduler.config.beta_end == pytest.approx(0.002)  # the folder's schedule, not the default
    assert model.sample_shape == (3, 16, 16)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert not model.unet.training
    assert not any(parameter.requires_grad for parameter in model.unet.parameters())
    assert model.vae is None and model.text_encoder is None and model.tokenizer is None


def test_bare_unet_folder_gets_default_linear_schedule(tiny_unet: UNet2DModel, tmp_path: Path) -> None:
    tiny_unet.save_pretrained(tmp_path)

    model = load_model(str(tmp_path), device="cpu")

    assert torch.allclose(_eps(model.unet), _eps(tiny_unet), atol=1e-5)
    for key, value in DEFAULT_TRAIN_SCHEDULE.items():
        assert model.scheduler.config[key] == value
    assert model.scheduler.config.clip_sample is False  # no scheduler config: unclamped


def test_dtype_is_applied(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")

    assert model.unet.dtype == torch.bfloat16
    assert model.dtype == torch.bfloat16


def test_missing_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"

    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(missing), device="cpu")

    _assert_one_line(error, str(missing))


def test_folder_without_weights_names_path(tiny_unet: UNet2DModel, tmp_path: Path) -> None:
    tiny_unet.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()

    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(tmp_path), device="cpu")

    _assert_one_line(error, str(tmp_path), "weights")


def test_folder_without_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(tmp_path), device="cpu")

    _assert_one_line(error, str(tmp_path), "config.json")


def test_unknown_id_names_it() -> None:
    with pytest.raises(ModelNotFoundError) as error:
        load_model("not a model id", device="cpu")

    _assert_one_line(error, "'not a model id'", "google/ddpm-ema-celebahq-256")


def test_offline_hub_id_says_how_to_provide_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache

    with pytest.raises(ModelNotFoundError) as error:
        load_model("google/ddpm-ema-celebahq-256", device="cpu")

    _assert_one_line(error, "'google/ddpm-ema-celebahq-256'", "hf download", "HF_HOME")


def test_non_epsilon_prediction_is_rejected(tiny_unet: UNet2DModel, tmp_path: Path) -> None:
    DDPMPipeline(unet=tiny_unet, scheduler=DDPMScheduler(prediction_type="v_prediction")).save_pretrained(
        tmp_path
    )

    with pytest.raises(ConfigError) as error:
        load_model(str(tmp_path), device="cpu")

    _assert_one_line(error, "v_prediction")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' call
@pytest.mark.parametrize("layout", ["pipeline", "bare"])
def test_hub_id_loads_from_the_local_cache_offline(
    layout: str, tiny_unet: UNet2DModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commit = "0" * 40
    repo_cache = tmp_path / "models--tiny--ddpm"
    snapshot = repo_cache / "snapshots" / commit
    if layout == "pipeline":
        DDPMPipeline(unet=tiny_unet, scheduler=DDPMScheduler(beta_end=0.002)).save_pretrained(snapshot)
    else:
        tiny_unet.save_pretrained(snapshot)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    model = load_model("tiny/ddpm", device="cpu")

    assert torch.allclose(_eps(model.unet), _eps(tiny_unet), atol=1e-5)
    assert model.model_id == "tiny/ddpm"
    assert model.scheduler.config.beta_end == pytest.approx(0.002 if layout == "pipeline" else 0.02)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu:0", ""])
def test_unknown_device_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_device(name)

    _assert_one_line(error, f"'{name}'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        load_model("unused/id", device="cuda")

    _assert_one_line(error, "'cuda'", "CUDA")
    assert resolve_device("auto") == torch.device("cpu")


def test_known_names_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("float64") == torch.float64
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_unknown_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_dtype("float8")

    _assert_one_line(error, "'float8'", "float32")


def test_a_model_the_study_configures_loads_with_the_study_clip_sample(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    assert study_clip_sample("models/toyfaces/ddpm") is True  # conf/model/toyfaces.yaml: the small model clamps
    assert study_clip_sample(str(root / "models/toyfaces/ddpm")) is True  # the same folder by another path
    assert study_clip_sample("google/ddpm-ema-celebahq-256") is False  # conf/model/ddpm_celebahq.yaml
    assert study_clip_sample("stable-diffusion-v1-5/stable-diffusion-v1-5") is False
    assert study_clip_sample(str(tmp_path)) is None
    assert study_clip_sample("models/toyfaces/ddpm", configs=tmp_path / "no_conf") is None
    model = load_model(str(root / "models/toyfaces/ddpm"), device="cpu")
    assert model.scheduler.config.clip_sample is True  # the saved training scheduler says False; the study clamps
