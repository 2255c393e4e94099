"""Shared pytest fixtures: tiny, randomly initialised models built from config (a pixel UNet, a latent DM and a
Stable Diffusion stack) saved as pipeline folders, and the params of a tiny study."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from pipeline.diffusion.models import DiffusionModel, load_model
from tests.helpers import tiny_clip_tokenizer


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_session() -> Iterator[None]:
    """One intra-op thread for the whole session: the tiny models gain nothing from a second thread, and on a
    loaded 2-core machine its waits cost more than it computes (a quarter to two thirds of the wall time of the
    modules that ask for no ``single_thread``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_unet() -> UNet2DModel:
    """A 16 px, 3-channel UNet2DModel (one attention level) with fixed random weights; h "after" is 32x8x8."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_unet: UNet2DModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_unet`` saved as a diffusers pipeline folder (model_index.json, unet/, scheduler/).

    The noise schedule is milder than DDPM's (beta_end 0.002, so ā_T ≈ 0.35): with random weights the
    predicted x_0 = (x_t - sqrt(1-ā) eps) / sqrt(ā) then stays O(1) instead of growing to O(100), which keeps
    float32 tolerances meaningful and DDIM inversion well-posed.
    """
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.002
    )
    DDPMPipeline(unet=tiny_unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> DiffusionModel:
    """``tiny_model_dir`` loaded on the CPU in float32 through :func:`pipeline.diffusion.models.load_model`, without
    clamping the predicted x_0 (an untrained UNet's predictions are far outside [-1, 1]; the exactness tests
    compare unclamped steps)."""
    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", clip_sample=False)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread per test module: tiny models run many times slower when threads contend for cores.

    Module-scoped so that module-scoped fixtures requesting it compute under the same thread count as the
    tests (bitwise comparisons depend on it).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_ldm_dir(tiny_unet: UNet2DModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent DM in the LDMPipeline layout (vqvae/, unet/, scheduler/): a VQModel that maps 32 px images to
    3x16x16 latents, denoised by ``tiny_unet``; the noise schedule of ``tiny_model_dir``."""
    from diffusers import DDIMScheduler, LDMPipeline, VQModel

    torch.manual_seed(1)
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=3,
        sample_size=32,
        num_vq_embeddings=32,
        norm_num_groups=4,
        vq_embed_dim=3,
    ).eval()
    folder = tmp_path_factory.mktemp("tiny_ldm")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.002)
    LDMPipeline(vqvae=vqvae, unet=tiny_unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion pipeline folder built from config (no download): UNet2DConditionModel on 4x16x16
    latents (h "after" is 64x8x8), AutoencoderKL decoding them to 32 px images, a 2-layer CLIP text encoder and
    an in-memory tokenizer (16 tokens); SD's DDIM layout (scaled_linear betas, steps_offset 1, no final
    alpha of one) with the mild noise levels of ``tiny_model_dir`` so that random weights stay in range."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=32,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.002, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_sd")
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return folder
