"""Shared pytest fixtures: tiny, randomly initialised models built from config (a pixel UNet, a latent DM and a
Stable Diffusion stack) saved as pipeline folders, and the params of a tiny study."""

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from pipeline.diffusion.models import DiffusionModel, load_model

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models/toyfaces/classifier"
"""The committed ToyFaces classifier, which labels every tiny study."""


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
    """``tiny_model_dir`` loaded on the CPU in float32 through :func:`pipeline.diffusion.models.load_model`."""
    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


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



def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIP tokenizer built in memory (no download): the 256 byte-level characters, each also with the
    end-of-word mark, plus the start and end tokens (514 tokens, no merges), so every character is a token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    tokens = characters + [f"{character}</w>" for character in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=max_length)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion pipeline folder built from config (NOTES 5.4): UNet2DConditionModel on 4x16x16
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

TINY_STUDY: dict[str, object] = {
    "sampler.steps": 4,
    "sampler.batch_size": 16,
    "generate.num_samples": 12,
    "generate.shard_size": 6,
    "hstats.top_k": 3,
    "hstats.label_conditioned": "false",
    "directions.supervised.groups": "extremes",  # a random classifier on 12 samples leaves label groups empty
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
    "evaluate.num_samples": 4,
    "evaluate.max_directions": 2,
    "evaluate.scales": "[-1.0,1.0]",
    "evaluate.bisection_steps": 2,
    "evaluate.kid_subset_size": 2,
    "evaluate.reference_samples": 4,
    "evaluate.kid_subsets": 5,
    "evaluate.grid_samples": 1,
    "logging.wandb.mode": "disabled",
    "device": "cpu",
}
"""Params of a whole study small enough for a test (seconds on one core)."""


def tiny_study_overrides(model_dir: Path, classifier: Path, changes: dict[str, object] | None = None) -> list[str]:
    """Hydra overrides of :data:`TINY_STUDY` for ``model_dir`` and ``classifier``, with ``changes`` applied."""
    values = {"model.source": model_dir, **TINY_STUDY, "classifier.path": classifier, **(changes or {})}
    return [f"{key}={value}" for key, value in values.items()]


EVERY_METHOD = ("pca_all_steps", "supervised", "jacobian", "pullback_global")
"""One directions file of each method."""
EVERY_METHOD_STUDY: dict[str, object] = {
    "sampler.batch_size": 8,
    "directions.pca.n_components": 2,
    "evaluate.methods": f"[{','.join(EVERY_METHOD)}]",
    "evaluate.scales": "[1.0]",
    "evaluate.bisection_steps": 1,
}
"""Changes to :data:`TINY_STUDY` for a study that evaluates one file of every method, one scale each."""


@contextlib.contextmanager
def run_study(folder: Path, overrides: list[str], stages: Sequence[ModuleType]) -> Iterator[Path]:
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
    from stages import evaluate, generate, hstats, jacobian, label, pca, pullback, supervised

    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    overrides = tiny_study_overrides(model_dir, CLASSIFIER, {**EVERY_METHOD_STUDY, **(changes or {})})
    stages = (generate, label, hstats, pca, supervised, jacobian, pullback, evaluate)
    with run_study(folder, overrides, stages) as study:
        yield study


def assert_every_method_evaluated(folder: Path) -> None:
    """A study of :func:`every_method_study` wrote every method's directions and scored each direction."""
    import json

    for name in EVERY_METHOD:
        assert (folder / f"directions/{name}.safetensors").is_file(), name
    metrics = json.loads((folder / "metrics/evaluate.json").read_text())
    assert set(metrics["methods"]) == set(EVERY_METHOD)
    for entry in metrics["methods"].values():
        for result in entry["directions"].values():
            assert -1.0 <= result["ssim"] <= 1.0 + 1e-6 and result["kid"] is not None
