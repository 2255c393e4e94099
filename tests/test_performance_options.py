"""GPU performance options with their CPU fallback (issue 7, item 5): mixed-precision autocast for sampling and
edit decodes while Jacobians stay exact, and the channels_last memory format; both run on the CPU here."""

from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.hspace import eps_of_h, h_of_x
from pipeline.models import load_model
from pipeline.sampling import sample
from pipeline.store import model_fingerprint
from pipeline.study import ModelConfig, open_model

SEEDS = [11, 12, 13]
TIMESTEP = 400


def _samples(model) -> torch.Tensor:
    return sample(model, SEEDS, steps=4, capture_steps=None).x_0


def test_autocast_runs_sampling_in_mixed_precision_close_to_float32(tiny_model_dir: Path, single_thread: None) -> None:
    exact = load_model(str(tiny_model_dir), device="cpu")
    mixed = load_model(str(tiny_model_dir), device="cpu", autocast="bfloat16")
    assert mixed.autocast == torch.bfloat16 and exact.autocast is None
    reference, approximate = _samples(exact), _samples(mixed)
    assert approximate.dtype == torch.float32
    assert model_fingerprint(mixed) != model_fingerprint(exact)  # a store never mixes the two
    difference = (approximate - reference).abs()
    assert difference.max() > 0  # bfloat16 really ran
    assert difference.mean() < 0.02 * reference.abs().mean()


def test_jacobian_maps_stay_exact_under_autocast(tiny_model_dir: Path, single_thread: None) -> None:
    exact = load_model(str(tiny_model_dir), device="cpu")
    mixed = load_model(str(tiny_model_dir), device="cpu", autocast="float16")
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(h_of_x(mixed, TIMESTEP)(x_t[None]), h_of_x(exact, TIMESTEP)(x_t[None]))
        denoise_mixed, clean_mixed = eps_of_h(mixed, x_t, TIMESTEP)
        denoise_exact, clean_exact = eps_of_h(exact, x_t, TIMESTEP)
        assert torch.equal(clean_mixed, clean_exact)
        assert torch.equal(denoise_mixed(clean_mixed[None] * 1.1), denoise_exact(clean_exact[None] * 1.1))


def test_channels_last_gives_the_same_samples(tiny_model_dir: Path, single_thread: None) -> None:
    plain = open_model(ModelConfig(source=str(tiny_model_dir)), device="cpu")
    nhwc = open_model(ModelConfig(source=str(tiny_model_dir), channels_last=True), device="cpu")
    weight = nhwc.unet.conv_in.weight
    assert nhwc.channels_last and weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_samples(nhwc), _samples(plain), rtol=1e-4, atol=1e-4)


def test_unknown_autocast_is_one_line_naming_the_key(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^params: model\.autocast='fp8': unknown; expected one of none, bfloat16"):
        open_model(ModelConfig(source=str(tiny_model_dir), autocast="fp8"), device="cpu")
