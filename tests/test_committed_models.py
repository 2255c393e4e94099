"""The committed ToyFaces DDPM: loads through the registry, samples faces, and is up to date in DVC."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.models import load_model
from pipeline.diffusion.sampling import sample, to_image_range

ROOT = Path(__file__).resolve().parents[1]


def test_committed_ddpm_loads_and_samples_faces(single_thread):
    model = load_model(str(ROOT / "models/toyfaces/ddpm"), device="cpu")
    assert model.sample_shape == (3, 32, 32)
    batch = sample(model, [0, 1], settings=DecodeSettings(steps=10), capture_steps=[0, 9])
    images = to_image_range(batch.x_0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert batch.h is not None and batch.h.shape[:2] == (2, 2)
    # A trained model makes structured images, not noise: neighbouring pixels are strongly correlated.
    horizontal = (images[..., 1:] - images[..., :-1]).abs().mean()
    assert horizontal < 0.1


@pytest.mark.skipif(shutil.which("dvc") is None or not (ROOT / ".git").exists(), reason="needs dvc and a git clone")
def test_trained_models_are_up_to_date_so_a_fresh_clone_does_not_retrain():
    status = subprocess.run(
        ["dvc", "status", "--json", "train_toy_model", "train_toy_classifier"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    hint = "after a code change that keeps training as is, run `dvc commit train_toy_model train_toy_classifier`"
    assert status.stdout.strip() == "{}", f"{hint}:\n{status.stdout}"
