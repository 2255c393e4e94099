"""Latent diffusion models: a tiny LDMPipeline stack (VQModel + UNet2DModel) built from config
runs generate -> label -> hstats -> directions (PCA, supervised, Jacobian, pullback) -> evaluate."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.data.store import open_store
from pipeline.diffusion.models import load_model
from tests.helpers import assert_every_method_evaluated, every_method_study


def test_a_latent_model_decodes_its_latents_with_the_autoencoder(tiny_ldm_dir: Path) -> None:
    model = load_model(str(tiny_ldm_dir), device="cpu")
    assert model.latent and model.sample_shape == (3, 16, 16)
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = model.images(latents)
    expected = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0.0 and images.max() <= 1.0
    torch.testing.assert_close(images, ((expected + 1) / 2).clamp(0, 1))
    pixel = load_model(str(tiny_ldm_dir / "unet"), device="cpu")  # the bare UNet folder: a pixel model
    assert not pixel.latent and pixel.images(latents).shape == (2, 3, 16, 16)


@pytest.fixture(scope="module")
def workspace(tiny_ldm_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Iterator[Path]:
    with every_method_study(tmp_path_factory.mktemp("latent_study"), tiny_ldm_dir) as folder:
        yield folder


@pytest.mark.slow
def test_latent_store_keeps_latents_and_decoded_images(workspace: Path, tiny_ldm_dir: Path) -> None:
    store = open_store(workspace / "data/samples")
    assert store.sample_shape == (3, 16, 16) and store.image_field == "images"
    stored = store.load("images", [0, 5], dtype=None)
    assert stored.dtype == torch.uint8 and stored.shape == (2, 3, 32, 32)
    model = load_model(str(tiny_ldm_dir), device="cpu", clip_sample=True)
    decoded = model.images(store.load("x_0", [0, 5]))
    assert (store.images([0, 5]) - decoded).abs().max() <= 0.5 / 255 + 1e-6
    header, *rows = (workspace / "data/labels.csv").read_text().splitlines()
    assert header.startswith("seed,") and len(rows) == 12


@pytest.mark.slow
def test_latent_study_runs_every_method_to_the_evaluation(workspace: Path) -> None:
    assert_every_method_evaluated(workspace)
    pullback_metrics = json.loads((workspace / "metrics/pullback.json").read_text())
    assert pullback_metrics["converged"] in (True, False) and pullback_metrics["products"] > 0
