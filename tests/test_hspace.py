"""Tests for pipeline.diffusion.hspace: capture and injection hooks on pixel and text-conditioned UNets."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from pipeline.diffusion.hspace import HSpaceHook, SharedPrefix, check_location, hspace_locations, hspace_shape
from pipeline.io.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_H_SHAPES = {
    "after": (32, 8, 8),
    "before": (32, 8, 8),
    "down_blocks.0": (16, 8, 8),
    "down_blocks.1": (32, 8, 8),
    "up_blocks.0": (32, 16, 16),
    "up_blocks.1": (16, 16, 16),
}


def _conditional_unet(**overrides: object) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    }
    return UNet2DConditionModel(**{**config, **overrides}).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def x_t() -> torch.Tensor:
    return torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3))


def _eps(unet: UNet2DModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, 400).sample


def test_locations_of_tiny_unet(tiny_unet: UNet2DModel) -> None:
    assert hspace_locations(tiny_unet) == list(TINY_H_SHAPES)


@pytest.mark.parametrize("location", list(TINY_H_SHAPES))
def test_zero_delta_is_bit_identical_and_h_has_expected_shape(
    location: str, tiny_unet: UNet2DModel, x_t: torch.Tensor
) -> None:
    plain = _eps(tiny_unet, x_t)

    with HSpaceHook(tiny_unet, location) as hook:
        hook.delta = torch.zeros(TINY_H_SHAPES[location])
        edited = _eps(tiny_unet, x_t)

    assert torch.equal(edited, plain)
    assert hook.h is not None and tuple(hook.h.shape) == (2, *TINY_H_SHAPES[location])
    assert hspace_shape(tiny_unet, location, (3, 16, 16)) == TINY_H_SHAPES[location]


@pytest.mark.parametrize("location", list(TINY_H_SHAPES))
def test_nonzero_delta_changes_output_and_h_is_recorded_clean(
    location: str, tiny_unet: UNet2DModel, x_t: torch.Tensor
) -> None:
    with HSpaceHook(tiny_unet, location) as hook:
        plain = _eps(tiny_unet, x_t)
        clean_h = hook.h
        hook.delta = torch.randn(TINY_H_SHAPES[location], generator=torch.Generator().manual_seed(4))
        edited = _eps(tiny_unet, x_t)

    assert (edited - plain).abs().mean() > 1e-3
    assert torch.equal(hook.h, clean_h)


def test_per_sample_delta_edits_only_its_sample(tiny_unet: UNet2DModel, x_t: torch.Tensor) -> None:
    plain = _eps(tiny_unet, x_t)
    delta = torch.zeros((2, 32, 8, 8))
    delta[0] = 1.0

    with HSpaceHook(tiny_unet, "after", capture=False) as hook:
        hook.delta = delta
        edited = _eps(tiny_unet, x_t)

    assert hook.h is None
    assert not torch.allclose(edited[0], plain[0], atol=1e-3)
    assert torch.allclose(edited[1], plain[1], atol=1e-6)


def test_down_block_edit_leaves_skip_residuals_untouched(tiny_unet: UNet2DModel, x_t: torch.Tensor) -> None:
    skips: list[tuple[torch.Tensor, ...]] = []
    handle = tiny_unet.up_blocks[0].register_forward_pre_hook(lambda module, args: skips.append(args[1]))
    try:
        with HSpaceHook(tiny_unet, "down_blocks.1") as hook:
            plain = _eps(tiny_unet, x_t)
            hook.delta = torch.ones((32, 8, 8))
            edited = _eps(tiny_unet, x_t)
    finally:
        handle.remove()

    assert not torch.allclose(edited, plain, atol=1e-3)
    for plain_skip, edited_skip in zip(skips[0], skips[1], strict=True):
        assert torch.equal(plain_skip, edited_skip)


def test_before_accepts_hidden_states_as_keyword(tiny_unet: UNet2DModel) -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn((1, 32, 8, 8), generator=generator)
    time_embedding = torch.randn((1, 64), generator=generator)
    delta = torch.randn((32, 8, 8), generator=generator)
    with torch.no_grad():
        expected = tiny_unet.mid_block(hidden + delta, time_embedding)
        with HSpaceHook(tiny_unet, "before") as hook:
            hook.delta = delta
            edited = tiny_unet.mid_block(hidden_states=hidden, temb=time_embedding)

    assert torch.equal(edited, expected)
    assert torch.equal(hook.h, hidden)


def test_wrong_delta_shape_names_both_shapes(tiny_unet: UNet2DModel, x_t: torch.Tensor) -> None:
    with HSpaceHook(tiny_unet, "after") as hook:
        hook.delta = torch.zeros((16, 8, 8))
        with pytest.raises(ConfigError) as error:
            _eps(tiny_unet, x_t)

    message = str(error.value)
    assert "\n" not in message
    assert "(16, 8, 8)" in message and "(32, 8, 8)" in message and "delta_h" in message


def test_unknown_location_lists_valid_ones(tiny_unet: UNet2DModel) -> None:
    with pytest.raises(ConfigError) as error:
        HSpaceHook(tiny_unet, "mid_blok")

    message = str(error.value)
    assert "\n" not in message
    assert "'mid_blok'" in message
    assert "'after', 'before', 'down_blocks.0'..'down_blocks.1', 'up_blocks.0'..'up_blocks.1'" in message
    with pytest.raises(ConfigError):
        check_location(tiny_unet, "down_blocks.2")


def test_hooks_are_removed_on_exit_even_after_an_error(tiny_unet: UNet2DModel, x_t: torch.Tensor) -> None:
    plain = _eps(tiny_unet, x_t)

    with pytest.raises(RuntimeError), HSpaceHook(tiny_unet, "after") as hook:
        hook.delta = torch.ones((32, 8, 8))
        raise RuntimeError("interrupted")
    with HSpaceHook(tiny_unet, "before") as hook:
        hook.delta = torch.ones((32, 8, 8))

    assert torch.equal(_eps(tiny_unet, x_t), plain)
    assert not tiny_unet.mid_block._forward_hooks and not tiny_unet.mid_block._forward_pre_hooks


def test_keep_graph_and_differentiable_delta(tiny_unet: UNet2DModel, x_t: torch.Tensor) -> None:
    x = x_t.clone().requires_grad_(True)
    delta = torch.zeros((32, 8, 8), requires_grad=True)

    with HSpaceHook(tiny_unet, "after", keep_graph=True) as hook:
        hook.delta = delta
        tiny_unet(x, 400).sample.square().sum().backward()

    assert hook.h.requires_grad
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    with HSpaceHook(tiny_unet, "after") as hook:
        tiny_unet(x, 400)
    assert not hook.h.requires_grad


def test_conditional_unet_capture_and_injection() -> None:
    unet = _conditional_unet()
    generator = torch.Generator().manual_seed(6)
    x = torch.randn((2, 4, 16, 16), generator=generator)
    text = torch.randn((2, 5, 32), generator=generator)
    with torch.no_grad():
        plain = unet(x, 300, encoder_hidden_states=text).sample
        with HSpaceHook(unet, "after") as hook:
            hook.delta = torch.zeros((64, 8, 8))
            zero_edit = unet(x, 300, encoder_hidden_states=text).sample
            hook.delta = torch.randn((64, 8, 8), generator=generator)
            edited = unet(x, 300, encoder_hidden_states=text).sample

    assert torch.equal(zero_edit, plain)
    assert (edited - plain).abs().mean() > 1e-3
    assert tuple(hook.h.shape) == (2, 64, 8, 8)
    assert hspace_shape(unet, "after", (4, 16, 16)) == (64, 8, 8)
    assert hspace_shape(unet, "down_blocks.0", (4, 16, 16)) == (32, 8, 8)


def test_unet_without_mid_block_rejects_mid_locations() -> None:
    unet = _conditional_unet(mid_block_type=None)

    with pytest.raises(ConfigError) as error:
        HSpaceHook(unet, "after")

    assert "no mid block" in str(error.value) and "\n" not in str(error.value)
    assert hspace_locations(unet)[0] == "down_blocks.0"


@pytest.mark.parametrize("location", list(TINY_H_SHAPES))
def test_a_shared_prefix_pass_equals_a_full_pass_with_the_clean_h(
    tiny_unet: UNet2DModel, x_t: torch.Tensor, location: str
) -> None:
    """The Asyrp pair: an edited pass, then a pass with the clean h at the same x_t that reuses everything
    computed before the h site; it must give exactly what a full pass with the clean h gives."""
    delta = torch.full(TINY_H_SHAPES[location], 0.3)
    prefix = SharedPrefix(tiny_unet, location)
    calls = []
    first = tiny_unet.down_blocks[0]
    with HSpaceHook(tiny_unet, location, capture=False) as hook, torch.no_grad():
        hook.delta = delta
        with prefix.recording():
            edited = tiny_unet(x_t, 400).sample
        hook.delta = None
        handle = first.register_forward_pre_hook(lambda module, args: calls.append(module))
        original_forward = type(first).forward
        ran = []
        type(first).forward = lambda self, *a, **k: (ran.append(1), original_forward(self, *a, **k))[1]
        try:
            with prefix.replaying():
                clean = tiny_unet(x_t, 400).sample
        finally:
            type(first).forward = original_forward
            handle.remove()
    assert torch.equal(clean, _eps(tiny_unet, x_t)) and not torch.equal(edited, clean)
    assert calls and not ran, "the first down block is before every h site: it must not run again"
    with torch.no_grad(), prefix.replaying():  # nothing recorded since: a plain pass
        assert torch.equal(tiny_unet(x_t, 400).sample, clean)
