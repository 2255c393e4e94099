"""Tests for pipeline.diffusion.sampling: seeding, exact re-decoding, h editing, Asyrp, inversion and validation."""

import copy
from collections.abc import Callable

import pytest
import torch
from diffusers import DDIMScheduler

from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.inversion import invert_ddim, invert_edit_friendly
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import (
    SampleBatch,
    asyrp_equivalent_scales,
    ddim_grid,
    decode,
    decode_scales,
    initial_noise,
    sample,
    to_image_range,
    variance_noise_seed,
)
from pipeline.io.errors import ConfigError, NumericalError

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 6
H_SHAPE = (32, 8, 8)
DETERMINISTIC = DecodeSettings(STEPS, injection="symmetric")
STOCHASTIC = DecodeSettings(STEPS, eta=1.0)


def _direction(scale: float = 0.5, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn((STEPS, *H_SHAPE), generator=torch.Generator().manual_seed(seed))


def _images(batch: int = 2) -> torch.Tensor:
    """Smooth test images in [-1, 1], [batch, 3, 16, 16]."""
    low_res = torch.rand((batch, 3, 4, 4), generator=torch.Generator().manual_seed(11)) * 2 - 1
    return torch.nn.functional.interpolate(low_res, size=(16, 16), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def stochastic(tiny_model: DiffusionModel, single_thread: None) -> SampleBatch:
    """Two samples at eta = 1 with all h captured."""
    return sample(tiny_model, [3, 4], settings=STOCHASTIC)


def test_sample_depends_only_on_its_seed(tiny_model: DiffusionModel) -> None:
    alone = sample(tiny_model, [7], settings=STOCHASTIC)
    in_batch = sample(tiny_model, [5, 6, 7, 8], settings=STOCHASTIC)
    chunked = sample(tiny_model, [5, 6, 7, 8], settings=DecodeSettings(STEPS, eta=1.0, batch_size=3))

    assert torch.equal(in_batch.x_T[2], alone.x_T[0]) and torch.equal(in_batch.noise[2], alone.noise[0])
    assert torch.allclose(in_batch.x_0[2], alone.x_0[0], atol=1e-5)
    assert torch.allclose(chunked.x_0, in_batch.x_0, atol=1e-5)
    assert torch.allclose(chunked.h, in_batch.h, atol=1e-5)
    assert in_batch.seeds.tolist() == [5, 6, 7, 8] and in_batch.seeds.dtype == torch.int64


def test_initial_noise_is_cpu_randn_with_a_distinct_variance_seed() -> None:
    x_T, z = initial_noise((3, 16, 16), [42], steps=STEPS, eta=0.5)

    assert torch.equal(x_T[0], torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(42)))
    variance_generator = torch.Generator().manual_seed(variance_noise_seed(42))
    assert torch.equal(z[0], torch.randn((STEPS, 3, 16, 16), generator=variance_generator))
    assert variance_noise_seed(42) != 42 and 0 <= variance_noise_seed(42) < 2**63
    assert initial_noise((3, 16, 16), [42], steps=STEPS, eta=0.0)[1] is None


def test_result_layout(stochastic: SampleBatch) -> None:
    assert stochastic.x_0.shape == (2, 3, 16, 16) and stochastic.x_0.dtype == torch.float32
    assert stochastic.noise.shape == (2, STEPS, 3, 16, 16)
    assert stochastic.h.shape == (2, STEPS, *H_SHAPE)
    assert stochastic.h_steps.tolist() == list(range(STEPS))
    assert stochastic.timesteps.tolist() == [830, 664, 498, 332, 166, 0]  # 1000 // 6 = 166 apart
    assert stochastic.hspace_location == "after" and stochastic.eta == 1.0


def test_redecoding_with_zero_delta_reproduces_exactly(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    again = decode(
        tiny_model, stochastic.x_T, stochastic.noise, settings=STOCHASTIC, delta_h=torch.zeros((STEPS, *H_SHAPE))
    )

    assert torch.equal(again.x_0, stochastic.x_0)
    assert torch.equal(again.h, stochastic.h)


def test_eta_zero_is_deterministic_and_stores_no_noise(tiny_model: DiffusionModel) -> None:
    first = sample(tiny_model, [1, 2], settings=DecodeSettings(STEPS, eta=0.0))
    second = sample(tiny_model, [1, 2], settings=DecodeSettings(STEPS, eta=0.0))
    ignored_noise = torch.randn((2, STEPS, 3, 16, 16))

    assert first.noise is None
    assert torch.equal(first.x_0, second.x_0)
    assert torch.equal(decode(tiny_model, first.x_T, ignored_noise, settings=DETERMINISTIC).x_0, first.x_0)


def test_eta_one_uses_the_stored_noise(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    other_noise = torch.randn(stochastic.noise.shape, generator=torch.Generator().manual_seed(9))

    redrawn = decode(tiny_model, stochastic.x_T, other_noise, settings=STOCHASTIC)

    assert (redrawn.x_0 - stochastic.x_0).abs().mean() > 1e-2


def test_matches_diffusers_ddim_scheduler(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    scheduler = DDIMScheduler.from_config(tiny_model.scheduler.config)
    scheduler.set_timesteps(STEPS)
    x = stochastic.x_T.clone()
    with torch.no_grad():
        for step_index, timestep in enumerate(scheduler.timesteps):
            eps = tiny_model.unet(x, timestep).sample
            x = scheduler.step(eps, timestep, x, eta=1.0, variance_noise=stochastic.noise[:, step_index]).prev_sample

    assert torch.allclose(x, stochastic.x_0, atol=1e-5)


def test_timestep_grid_follows_the_scheduler(tiny_model: DiffusionModel) -> None:
    grid = ddim_grid(tiny_model.scheduler, 10)

    assert grid.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert grid.alphas_cumprod_prev[0] == grid.alphas_cumprod[1]
    assert grid.alphas_cumprod_prev[-1] == 1.0  # set_alpha_to_one of a DDPM config
    assert grid.sigmas(0.0).abs().max() == 0 and grid.sigmas(1.0)[-1] == 0


def test_edit_window_changes_only_from_its_first_step(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    edited = decode(
        tiny_model, stochastic.x_T, stochastic.noise, settings=STOCHASTIC, delta_h=_direction(), edit_steps=[3, 4]
    )

    assert torch.equal(edited.h[:, :4], stochastic.h[:, :4])  # h is recorded before delta at step 3 too
    assert (edited.h[:, 4] - stochastic.h[:, 4]).abs().mean() > 1e-4
    assert (edited.x_0 - stochastic.x_0).abs().mean() > 1e-3


def test_per_sample_delta_edits_only_its_sample(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    delta = torch.zeros((2, STEPS, *H_SHAPE))
    delta[1] = _direction()

    edited = sample(tiny_model, [3, 4], settings=STOCHASTIC, delta_h=delta)

    assert torch.equal(edited.x_0[0], stochastic.x_0[0])
    assert (edited.x_0[1] - stochastic.x_0[1]).abs().mean() > 1e-3


def test_decode_scales_matches_single_decodes(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    direction = _direction()

    scaled = decode_scales(
        tiny_model, stochastic.x_T[1], stochastic.noise[1], direction, [0.0, 0.5, -1.0], settings=STOCHASTIC
    )
    single = decode(tiny_model, stochastic.x_T[1:], stochastic.noise[1:], settings=STOCHASTIC, delta_h=-1.0 * direction)

    assert scaled.shape == (3, 3, 16, 16)
    assert torch.allclose(scaled[0], stochastic.x_0[1], atol=1e-5)
    assert torch.allclose(scaled[2], single.x_0[0], atol=1e-5)


def test_asyrp_with_zero_delta_equals_plain(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    asyrp = decode(
        tiny_model,
        stochastic.x_T,
        stochastic.noise,
        settings=DecodeSettings(STEPS, eta=1.0, injection="asyrp"),
        delta_h=torch.zeros((STEPS, *H_SHAPE)),
    )

    assert torch.equal(asyrp.x_0, stochastic.x_0)


def test_asyrp_equals_rescaled_symmetric_edit_to_second_order(tiny_model: DiffusionModel) -> None:
    base = sample(tiny_model, [5], settings=DecodeSettings(STEPS, eta=0.0), capture_steps=None)
    per_step_scale = asyrp_equivalent_scales(ddim_grid(tiny_model.scheduler, STEPS)).float()
    assert (per_step_scale >= 1).all()

    def mismatch(strength: float) -> tuple[float, float]:
        delta = _direction(strength)
        asyrp = decode(
            tiny_model, base.x_T, settings=DecodeSettings(STEPS, injection="asyrp"), delta_h=delta, capture_steps=None
        ).x_0
        rescaled = delta * per_step_scale.reshape(-1, 1, 1, 1)
        symmetric = decode(tiny_model, base.x_T, settings=DETERMINISTIC, delta_h=rescaled, capture_steps=None).x_0
        return (asyrp - symmetric).abs().max().item(), (asyrp - base.x_0).abs().max().item()

    large_gap, _ = mismatch(0.02)
    small_gap, small_edit = mismatch(0.01)

    assert small_gap < 0.2 * small_edit
    assert large_gap / small_gap > 3.0  # O(|delta|^2): halving delta quarters the gap


def test_x_t_override_equals_decoding_from_that_step(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    replacement = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(8))

    overridden = decode(
        tiny_model, stochastic.x_T, stochastic.noise, settings=STOCHASTIC, x_t_override=(3, replacement)
    )
    continued = decode(tiny_model, replacement, stochastic.noise, settings=STOCHASTIC, start_step=3)

    assert (overridden.x_0 - stochastic.x_0).abs().mean() > 1e-2
    assert torch.equal(overridden.x_0, continued.x_0)
    assert torch.equal(overridden.h[:, :3], stochastic.h[:, :3])
    assert torch.equal(overridden.h[:, 3:], continued.h) and continued.h_steps.tolist() == [3, 4, 5]


def test_capture_subset_in_half_precision(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    subset = sample(
        tiny_model, [3, 4], settings=DecodeSettings(STEPS, eta=1.0, h_dtype=torch.float16), capture_steps=[4, 1]
    )
    nothing = sample(tiny_model, [3, 4], settings=STOCHASTIC, capture_steps=None, keep_noise=False)

    assert subset.h_steps.tolist() == [1, 4] and subset.h.dtype == torch.float16
    assert torch.equal(subset.h, stochastic.h[:, [1, 4]].half())
    assert nothing.h is None and nothing.h_steps is None
    assert nothing.x_T is None and nothing.noise is None
    assert torch.equal(nothing.x_0, stochastic.x_0)


def test_edit_friendly_inversion_reconstructs(tiny_model: DiffusionModel) -> None:
    images = _images()
    for eta in (1.0, 0.5):
        inverted = invert_edit_friendly(
            tiny_model, images, settings=DecodeSettings(STEPS, eta=eta), seed=1, capture_steps="all"
        )
        rebuilt = decode(tiny_model, inverted.x_T, inverted.noise, settings=DecodeSettings(STEPS, eta=eta))

        assert (rebuilt.x_0 - images).square().mean() < 1e-3
        assert torch.allclose(rebuilt.h, inverted.h, atol=1e-4)
        assert torch.equal(inverted.x_0, images) and inverted.noise.shape == (2, STEPS, 3, 16, 16)


def test_ddim_inversion_error_falls_with_more_steps(tiny_model: DiffusionModel) -> None:
    images = _images()
    errors = []
    for steps in (5, 20, 50):
        inverted = invert_ddim(tiny_model, images, settings=DecodeSettings(steps=steps))
        rebuilt = decode(tiny_model, inverted.x_T, settings=DecodeSettings(steps=steps), capture_steps=None)
        errors.append((rebuilt.x_0 - images).square().mean().item())

    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_ddim_inversion_records_h_per_step(tiny_model: DiffusionModel) -> None:
    inverted = invert_ddim(
        tiny_model, _images(1), settings=DecodeSettings(STEPS, h_dtype=torch.float16), capture_steps=[0, STEPS - 1]
    )

    assert inverted.h.shape == (1, 2, *H_SHAPE) and inverted.h.dtype == torch.float16
    assert inverted.noise is None and inverted.eta == 0.0


def test_half_precision_unet_keeps_float32_state(tiny_model: DiffusionModel) -> None:
    bf16_model = copy.copy(tiny_model)
    bf16_model.unet = copy.deepcopy(tiny_model.unet).to(torch.bfloat16)
    bf16_model.dtype = torch.bfloat16

    low = sample(bf16_model, [3], settings=DecodeSettings(steps=3, eta=1.0))
    full = sample(tiny_model, [3], settings=DecodeSettings(steps=3, eta=1.0))

    assert low.x_0.dtype == torch.float32 and low.h.dtype == torch.float32
    assert (low.x_0 - full.x_0).abs().mean() < 0.05


def test_nan_output_raises_numerical_error_naming_timestep(tiny_model: DiffusionModel) -> None:
    broken = copy.copy(tiny_model)
    broken.unet = copy.deepcopy(tiny_model.unet)
    broken.unet.conv_out.bias.fill_(float("nan"))

    with pytest.raises(NumericalError) as error:
        sample(broken, [0], settings=DETERMINISTIC)

    assert "timestep 830" in str(error.value) and "\n" not in str(error.value)


def test_progress_bar_and_image_range(tiny_model: DiffusionModel, capsys: pytest.CaptureFixture[str]) -> None:
    sample(tiny_model, [0], settings=DecodeSettings(steps=2, progress=True))

    assert "sampling" in capsys.readouterr().err
    images = to_image_range(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]))
    assert images.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def _bad_calls(model: DiffusionModel, base: SampleBatch) -> dict[str, tuple[Callable[[], object], str]]:
    """Each entry: (a call that must raise ConfigError, a fragment its message must contain)."""
    x_T, noise = base.x_T, base.noise
    return {
        "eta above 1": (lambda: sample(model, [0], settings=DecodeSettings(STEPS, eta=1.5)), "eta"),
        "eta below 0": (lambda: decode(model, x_T, noise, settings=DecodeSettings(STEPS, eta=-0.1)), "eta"),
        "zero steps": (lambda: sample(model, [0], settings=DecodeSettings(steps=0)), "steps"),
        "too many steps": (lambda: sample(model, [0], settings=DecodeSettings(steps=1001)), "steps"),
        "edit window": (
            lambda: decode(model, x_T, settings=DETERMINISTIC, delta_h=_direction(), edit_steps=[2, STEPS]),
            "edit_steps",
        ),
        "capture index": (lambda: sample(model, [0], settings=DETERMINISTIC, capture_steps=[-1]), "capture_steps"),
        "capture word": (lambda: sample(model, [0], settings=DETERMINISTIC, capture_steps="some"), "capture_steps"),
        "delta shape": (
            lambda: decode(model, x_T, settings=DETERMINISTIC, delta_h=torch.zeros((STEPS, 16, 8, 8))),
            "expected (6, 32, 8, 8)",
        ),
        "override step": (
            lambda: decode(model, x_T, settings=DETERMINISTIC, x_t_override=(STEPS, x_T)),
            "x_t_override",
        ),
        "override shape": (
            lambda: decode(model, x_T, settings=DETERMINISTIC, x_t_override=(2, x_T[:1])),
            "x_t_override",
        ),
        "start step": (lambda: decode(model, x_T, settings=DETERMINISTIC, start_step=STEPS), "start_step"),
        "missing noise": (lambda: decode(model, x_T, settings=DecodeSettings(STEPS, eta=0.5)), "noise"),
        "noise shape": (
            lambda: decode(model, x_T, noise[:, :2], settings=DecodeSettings(STEPS, eta=0.5)),
            "noise shape",
        ),
        "x_T shape": (lambda: decode(model, x_T[:, :, :8], settings=DETERMINISTIC), "x_T shape"),
        "image size": (
            lambda: invert_ddim(model, torch.zeros((1, 3, 32, 32)), settings=DETERMINISTIC),
            "(B, 3, 16, 16)",
        ),
        "EF eta": (
            lambda: invert_edit_friendly(model, torch.zeros((1, 3, 16, 16)), settings=DecodeSettings(STEPS, eta=0.0)),
            "eta",
        ),
        "location": (lambda: sample(model, [0], settings=DecodeSettings(STEPS, location="middle")), "hspace location"),
        "seed": (lambda: sample(model, [-3], settings=DETERMINISTIC), "seed"),
        "batch size": (lambda: sample(model, [0], settings=DecodeSettings(STEPS, batch_size=0)), "batch_size"),
        "scales sample": (
            lambda: decode_scales(model, x_T, None, _direction(), [1.0], settings=DETERMINISTIC),
            "x_T",
        ),
    }


def test_bad_inputs_raise_one_line_config_errors(tiny_model: DiffusionModel, stochastic: SampleBatch) -> None:
    for name, (call, fragment) in _bad_calls(tiny_model, stochastic).items():
        with pytest.raises(ConfigError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message, name
        assert fragment in message, f"{name}: {message}"


def test_clip_sample_keeps_the_predicted_x0_in_range(tiny_model_dir, single_thread):
    from pipeline.diffusion.models import load_model

    clipped = load_model(str(tiny_model_dir), device="cpu", clip_sample=True)
    assert clipped.scheduler.config.clip_sample
    x_0 = sample(clipped, [0, 1], settings=DecodeSettings(steps=4, eta=0.0), capture_steps=None).x_0
    assert x_0.abs().max() <= 1.0
    free = load_model(str(tiny_model_dir), device="cpu", clip_sample=False)
    assert not free.scheduler.config.clip_sample
    assert load_model(str(tiny_model_dir), device="cpu").scheduler.config.clip_sample  # the folder's own setting
