"""Stable Diffusion: a tiny SD stack built from config (UNet2DConditionModel + AutoencoderKL +
CLIP text encoder + in-memory tokenizer) loads with its prompts, samples exactly as diffusers'
StableDiffusionPipeline does (with and without classifier-free guidance), handles the doubled CFG batch in h
capture and injection, and runs generate -> label -> hstats -> directions (PCA, supervised, Jacobian, pullback
with an edit prompt) -> evaluate."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.data.store import open_store
from pipeline.data.store_writing import model_fingerprint
from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.hspace import HSpaceHook, eps_of_h, h_of_x
from pipeline.diffusion.models import DiffusionModel, TextPrompts, load_model
from pipeline.diffusion.sampling import decode, initial_noise, sample
from pipeline.io.errors import ConfigError, ModelNotFoundError
from tests.helpers import assert_every_method_evaluated, every_method_study

GUIDED = TextPrompts(prompt="a smiling face", negative_prompt="blurry", guidance_scale=3.0, edit_prompt="glasses")
TIMESTEP = 500


@pytest.fixture(scope="module")
def guided(tiny_sd_dir: Path, single_thread: None) -> DiffusionModel:
    return load_model(str(tiny_sd_dir), device="cpu", text=GUIDED)


def _unet_eps(model: DiffusionModel, x: torch.Tensor, text: str) -> torch.Tensor:
    """eps of one plain UNet call on x conditioned on ``text`` (the reference for :meth:`DiffusionModel.eps`)."""
    states = model.encode_prompt(text).expand(len(x), -1, -1)
    return model.unet(x, TIMESTEP, encoder_hidden_states=states).sample


def test_a_stable_diffusion_folder_loads_with_its_text_encoder_and_prompts(
    tiny_sd_dir: Path, guided: DiffusionModel
) -> None:
    assert guided.latent and guided.sample_shape == (4, 16, 16) and guided.prompts == GUIDED
    assert guided.conditioning.prompt.shape == (1, 16, 32) and guided.conditioning.branches == 2
    assert guided.branches() == 2 and guided.branches(edit=True) == 1
    assert guided.images(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 32, 32)
    plain = load_model(str(tiny_sd_dir), device="cpu")  # no text section: the empty prompt, no guidance
    assert plain.prompts == TextPrompts() and plain.branches() == 1
    # The prompt is part of what defines the samples; the edit prompt is not.
    other_edit = load_model(str(tiny_sd_dir), device="cpu", text=TextPrompts(**{**vars(GUIDED), "edit_prompt": ""}))
    assert model_fingerprint(other_edit) == model_fingerprint(guided) != model_fingerprint(plain)


def test_text_settings_are_refused_for_an_unconditional_model_and_a_bare_conditional_unet(
    tiny_model_dir: Path, tiny_sd_dir: Path
) -> None:
    with pytest.raises(ConfigError, match=r"model\.text: model .* is not text-conditioned"):
        load_model(str(tiny_model_dir), device="cpu", text=TextPrompts(prompt="a face"))
    with pytest.raises(ModelNotFoundError, match="needs a pipeline folder with text_encoder/ and tokenizer/"):
        load_model(str(tiny_sd_dir / "unet"), device="cpu")
    with pytest.raises(ConfigError, match=r"model\.text\.guidance_scale=-1\.0: must be >= 0"):
        TextPrompts(guidance_scale=-1.0)


def test_guided_eps_is_the_cfg_combination_of_two_unet_calls(guided: DiffusionModel) -> None:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unconditional, conditional = _unet_eps(guided, x, "blurry"), _unet_eps(guided, x, "a smiling face")
        expected = unconditional + 3.0 * (conditional - unconditional)
        torch.testing.assert_close(guided.eps(x, TIMESTEP), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided.eps(x, TIMESTEP, edit=True), _unet_eps(guided, x, "glasses"))


def test_the_hook_records_the_unconditional_branch_and_edits_both(guided: DiffusionModel) -> None:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    delta = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with HSpaceHook(guided.unet, "after", branches=2) as hook:
            guided.eps(x, TIMESTEP)
        with HSpaceHook(guided.unet, "after") as alone:
            _unet_eps(guided, x, "blurry")
        assert hook.h.shape == (2, 64, 8, 8)
        torch.testing.assert_close(hook.h, alone.h, atol=1e-5, rtol=1e-5)
        with HSpaceHook(guided.unet, "after", capture=False, branches=2) as edit:
            edit.delta = delta
            edited = guided.eps(x, TIMESTEP)
        with HSpaceHook(guided.unet, "after", capture=False) as edit:
            edit.delta = delta
            unconditional, conditional = _unet_eps(guided, x, "blurry"), _unet_eps(guided, x, "a smiling face")
    torch.testing.assert_close(edited, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sampling_matches_the_diffusers_stable_diffusion_pipeline(
    tiny_sd_dir: Path, single_thread: None, guidance_scale: float
) -> None:
    from diffusers import StableDiffusionPipeline

    text = TextPrompts(prompt="a smiling face", negative_prompt="blurry", guidance_scale=guidance_scale)
    model = load_model(str(tiny_sd_dir), device="cpu", text=text)
    x_T, _ = initial_noise(model.sample_shape, [7, 8], steps=4, eta=0.0)
    ours = decode(model, x_T, settings=DecodeSettings(4, eta=0.0), capture_steps=None).x_0
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        ["a smiling face"] * 2, negative_prompt=["blurry"] * 2, guidance_scale=guidance_scale, num_inference_steps=4,
        latents=x_T.clone(), output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_jacobian_maps_use_the_guided_denoiser_and_the_edit_prompt(guided: DiffusionModel) -> None:
    x_t = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(3))
    denoise, clean = eps_of_h(guided, x_t, TIMESTEP)
    with torch.no_grad():
        torch.testing.assert_close(denoise(clean.unsqueeze(0)), guided.eps(x_t.unsqueeze(0), TIMESTEP))
        with HSpaceHook(guided.unet, "after") as hook:
            _unet_eps(guided, x_t.unsqueeze(0), "glasses")
        torch.testing.assert_close(h_of_x(guided, TIMESTEP)(x_t.unsqueeze(0)), hook.h)


def test_generation_with_h_capture_and_an_edit_stays_consistent(guided: DiffusionModel) -> None:
    result = sample(guided, [3, 4, 5], settings=DecodeSettings(3), capture_steps="all")
    assert result.h.shape == (3, 3, 64, 8, 8) and torch.isfinite(result.x_0).all()
    zero = decode(guided, result.x_T, settings=DecodeSettings(3), delta_h=torch.zeros(3, 64, 8, 8), capture_steps=None)
    torch.testing.assert_close(zero.x_0, result.x_0, atol=1e-5, rtol=1e-5)
    moved = decode(guided, result.x_T, settings=DecodeSettings(3), delta_h=torch.ones(3, 64, 8, 8), capture_steps=None)
    assert (moved.x_0 - result.x_0).abs().mean() > 1e-3


@pytest.fixture(scope="module")
def workspace(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Iterator[Path]:
    changes = {
        "+model.text.prompt": "'a smiling face'",
        "+model.text.guidance_scale": 2.0,
        "+model.text.edit_prompt": "glasses",
        "model.clip_sample": "false",
    }
    with every_method_study(tmp_path_factory.mktemp("sd_study"), tiny_sd_dir, changes) as folder:
        yield folder


@pytest.mark.slow
def test_stable_diffusion_study_runs_every_method_to_the_evaluation(workspace: Path, tiny_sd_dir: Path) -> None:
    store = open_store(workspace / "data/samples")
    assert store.sample_shape == (4, 16, 16) and store.image_field == "images" and store.h_shape == (64, 8, 8)
    model = load_model(str(tiny_sd_dir), device="cpu", text=TextPrompts("a smiling face", "", 2.0, "glasses"))
    assert store.header["model_fingerprint"] == model_fingerprint(model)
    assert_every_method_evaluated(workspace)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' call
def test_a_stable_diffusion_hub_id_loads_from_the_local_cache_offline(
    tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    import huggingface_hub

    commit = "0" * 40
    repo_cache = tmp_path / "models--tiny--sd"
    shutil.copytree(tiny_sd_dir, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = load_model("tiny/sd", device="cpu", text=GUIDED)
    local = load_model(str(tiny_sd_dir), device="cpu", text=GUIDED)
    assert model.model_id == "tiny/sd" and model_fingerprint(model) == model_fingerprint(local)
    with pytest.raises(ModelNotFoundError, match="'stabilityai/stable-diffusion-2-1-base' are not available locally"):
        load_model("stabilityai/stable-diffusion-2-1-base", device="cpu")


def test_real_images_encode_to_latents_and_invert_exactly_under_guidance(guided: DiffusionModel) -> None:
    from pipeline.diffusion.inversion import invert_edit_friendly

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    latents = guided.encode_images(images)
    posterior = guided.vae.encode(images * 2 - 1).latent_dist.mode() * guided.vae.config.scaling_factor
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, posterior)
    inverted = invert_edit_friendly(guided, latents, settings=DecodeSettings(4, eta=1.0), seed=0)
    rebuilt = decode(guided, inverted.x_T, inverted.noise, settings=DecodeSettings(4, eta=1.0), capture_steps=None)
    torch.testing.assert_close(rebuilt.x_0, latents, atol=1e-4, rtol=1e-4)
