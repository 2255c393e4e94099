"""GPU performance options with their CPU fallback: mixed-precision autocast for sampling and
edit decodes while Jacobians stay exact, the channels_last memory format, and torch.compile of the UNet's
layers; all run on the CPU here."""

import copy
from pathlib import Path

import pytest
import torch

from pipeline.data.store_writing import model_fingerprint
from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.hspace import HSpaceHook, eps_of_h, h_of_x
from pipeline.diffusion.models import ModelConfig, compile_unet_blocks, load_model, open_model
from pipeline.diffusion.sampling import sample
from pipeline.io.errors import ConfigError

SEEDS = [11, 12, 13]
TIMESTEP = 400


def _samples(model) -> torch.Tensor:
    return sample(model, SEEDS, settings=DecodeSettings(steps=4), capture_steps=None).x_0


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


@pytest.fixture(scope="module")
def compiled_model(tiny_model_dir: Path, single_thread: None):
    """The tiny model with its UNet layers compiled by inductor (compiled lazily, on first use)."""
    return open_model(ModelConfig(source=str(tiny_model_dir), compile="default"), device="cpu")


def test_compile_covers_every_layer_inside_the_blocks_and_leaves_the_hook_sites_eager(compiled_model) -> None:
    unet = compiled_model.unet
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    compiled = [module for module in unet.modules() if module._compiled_call_impl is not None]
    expected = sum(len(group) for b in blocks for group in b.children() if isinstance(group, torch.nn.ModuleList))
    assert len(compiled) == expected > 0
    assert not any(block._compiled_call_impl is not None for block in blocks)
    assert compiled_model.compile == "default"


@pytest.mark.slow
def test_compiled_sampling_and_capture_agree_with_eager_and_spectra_stay_exact(
    tiny_model_dir: Path, compiled_model, single_thread: None
) -> None:
    eager = open_model(ModelConfig(source=str(tiny_model_dir)), device="cpu")
    torch.testing.assert_close(_samples(compiled_model), _samples(eager), rtol=1e-4, atol=1e-4)
    assert model_fingerprint(compiled_model) != model_fingerprint(eager)  # fused kernels round differently
    # as many images as SEEDS: the layers compiled for sampling serve the capture too (a new batch size recompiles)
    x = torch.randn(len(SEEDS), 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        captured = []
        for model in (eager, compiled_model):
            with HSpaceHook.for_model(model, "after", capture=True) as hook:
                model.eps(x, TIMESTEP)
            captured.append(hook.h)
        torch.testing.assert_close(captured[1], captured[0], rtol=1e-4, atol=1e-4)
        x_t = x[0]
        assert torch.equal(h_of_x(compiled_model, TIMESTEP)(x_t[None]), h_of_x(eager, TIMESTEP)(x_t[None]))
        denoise_compiled, clean_compiled = eps_of_h(compiled_model, x_t, TIMESTEP)
        denoise_eager, clean_eager = eps_of_h(eager, x_t, TIMESTEP)
        assert torch.equal(denoise_compiled(clean_compiled[None] * 1.1), denoise_eager(clean_eager[None] * 1.1))


def test_unknown_compile_mode_is_one_line_naming_the_key(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^params: model\.compile='fast': unknown; expected one of none, default"):
        open_model(ModelConfig(source=str(tiny_model_dir), compile="fast"), device="cpu")


def test_compile_allows_a_compiled_variant_per_layer(tiny_unet) -> None:
    layers = compile_unet_blocks(copy.deepcopy(tiny_unet), "default")
    assert torch._dynamo.config.recompile_limit >= 2 * layers
