"""Tiny training runs of the ToyFaces DDPM and classifier: outputs load, and a killed run resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.io.errors import ConfigError
from pipeline.labellers.cnn import CNNConfig
from pipeline.steps.train_toy_classifier import TrainToyClassifierConfig
from pipeline.steps.train_toy_classifier import run as train_toy_classifier
from pipeline.steps.train_toy_model import TrainToyModelConfig
from pipeline.steps.train_toy_model import run as train_toy_model
from pipeline.toyfaces.classifier import ToyFacesClassifier
from pipeline.toyfaces.training import OptimConfig, ToyUNetConfig, learning_rate
from pipeline.toyfaces.world import ToyFacesConfig

WORLD = ToyFacesConfig(resolution=16)


def tiny_model_config(steps: int = 4) -> TrainToyModelConfig:
    return TrainToyModelConfig(
        unet=ToyUNetConfig(
            block_out_channels=[8, 16],
            down_block_types=["DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D"],
            norm_num_groups=4,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        steps=steps,
        batch_size=4,
        checkpoint_every=2,
        heldout_size=8,
    )


class Interrupt(Exception):
    pass


def crash_at(stop: int):
    """An ``on_step`` callback that kills the run when step ``stop`` (0-based) has been taken."""

    def on_step(step: int, loss: float) -> None:
        if step == stop:
            raise Interrupt

    return on_step


def test_ddpm_training_writes_a_loadable_pipeline_and_resumes_exactly(tmp_path):
    cfg = tiny_model_config()
    _, metrics = train_toy_model(cfg, WORLD, tmp_path / "a", tmp_path / "ck_a", progress=False)
    assert set(metrics) == {"heldout_loss"} and 0 < metrics["heldout_loss"] < 2
    for name in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler",
    ):
        assert (tmp_path / "a" / name).exists()

    with pytest.raises(Interrupt):
        train_toy_model(
            cfg, WORLD, tmp_path / "b", tmp_path / "ck_b", progress=False, on_step=crash_at(2)
        )
    assert not (tmp_path / "b").exists(), "no output may appear before training finished"
    assert json.loads((tmp_path / "ck_b" / "state.json").read_text())["step"] == 2
    train_toy_model(cfg, WORLD, tmp_path / "b", tmp_path / "ck_b", progress=False)

    uninterrupted = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    with pytest.raises(Interrupt):
        train_toy_model(
            tiny_model_config(steps=4), WORLD, tmp_path / "out", tmp_path / "ck", progress=False,
            on_step=crash_at(2),
        )  # fmt: skip
    steps_seen: list[int] = []
    train_toy_model(
        tiny_model_config(steps=3), WORLD, tmp_path / "out", tmp_path / "ck", progress=False,
        on_step=lambda step, loss: steps_seen.append(step),
    )  # fmt: skip
    assert steps_seen == [0, 1, 2], "a changed steps (another learning-rate schedule) must start over"
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 3


def test_classifier_training_reports_heldout_accuracy_and_round_trips(tmp_path):
    cfg = TrainToyClassifierConfig(
        model=CNNConfig(widths=[8, 16], feature_dim=16, resolution=16),
        steps=3,
        batch_size=8,
        heldout_size=16,
        checkpoint_every=2,
    )
    model, metrics = train_toy_classifier(cfg, WORLD, tmp_path / "clf", tmp_path / "ck", progress=False)
    assert 0.0 <= metrics["min_accuracy"] <= 1.0
    assert {f"accuracy/{name}" for name in model.attribute_names} <= metrics.keys()
    reloaded = ToyFacesClassifier.load(tmp_path / "clf")
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(reloaded(images), model(images))
    assert reloaded.features(images).shape == (2, 16)
    assert reloaded.predict_factors(images).shape == (2, len(model.factor_names))


def test_learning_rate_warms_up_then_decays():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, 100, cfg) == pytest.approx(0.1)
    assert learning_rate(9, 100, cfg) == pytest.approx(1.0)
    assert learning_rate(99, 100, cfg) == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("steps", 0, "train_toy_model.steps"),
        ("batch_size", 0, "train_toy_model.batch_size"),
        ("ema_decay", 1.0, "ema_decay"),
    ],
)
def test_bad_training_config_is_one_line(tmp_path, field, value, key):
    cfg = tiny_model_config()
    setattr(cfg, field, value)
    with pytest.raises(ConfigError) as error:
        train_toy_model(cfg, WORLD, tmp_path / "out", tmp_path / "ck", progress=False)
    assert key in str(error.value) and "\n" not in str(error.value)
