"""ToyFaces: determinism, exact labels, configured statistics, region masks and validation."""

import dataclasses

import pytest
import torch

from pipeline.io.errors import ConfigError
from pipeline.toyfaces.world import (
    BINARY_ATTRIBUTES,
    CONTINUOUS_FACTORS,
    CorrelatedPair,
    Factors,
    ToyFacesConfig,
    make_batch,
    region_masks,
    render,
    sample_factors,
)


@pytest.fixture(scope="module")
def world() -> ToyFacesConfig:
    return ToyFacesConfig()


def with_attribute(factors: Factors, name: str, value: float) -> Factors:
    binary = factors.binary.clone()
    binary[:, BINARY_ATTRIBUTES.index(name)] = value
    return Factors(binary=binary, continuous=factors.continuous)


def test_images_are_a_pure_function_of_the_seed(world):
    images, factors = make_batch([3, 7, 11], world)
    again, _ = make_batch([11, 3], world)
    assert images.shape == (3, 3, 32, 32)
    assert factors.binary.shape == (3, len(BINARY_ATTRIBUTES))
    assert factors.continuous.shape == (3, len(CONTINUOUS_FACTORS))
    assert torch.equal(images[2], again[0]) and torch.equal(images[0], again[1])
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_marginals_and_correlation_match_the_config(world):
    factors = sample_factors(range(20_000), world)
    for index, name in enumerate(BINARY_ATTRIBUTES):
        assert factors.binary[:, index].mean().item() == pytest.approx(world.probabilities[name], abs=0.015)
    pair = world.correlations[0]
    first, second = factors.attribute(pair.first), factors.attribute(pair.second)
    assert torch.corrcoef(torch.stack([first, second]))[0, 1].item() == pytest.approx(pair.rho, abs=0.03)
    assert factors.factor("pose_x").min() < -0.9 and factors.factor("pose_x").max() > 0.9


@pytest.mark.parametrize(
    ("attribute", "region"),
    [("smiling", "mouth"), ("eyes_open", "eyes"), ("eyeglasses", "eyes")],
)
def test_a_local_attribute_changes_only_its_region(world, attribute, region):
    factors = sample_factors(range(64), world)
    factors = (
        with_attribute(with_attribute(factors, "hat", 0.0), "eyeglasses", 0.0)
        if attribute != "eyeglasses"
        else factors
    )
    off, on = with_attribute(factors, attribute, 0.0), with_attribute(factors, attribute, 1.0)
    changed = (render(on, world) - render(off, world)).abs().amax(dim=1, keepdim=True) > 1e-6
    mask = region_masks(off, world)[region] > 0
    # Anti-aliased borders may touch the pixel ring around a region box; nothing further away may change.
    grown = torch.nn.functional.max_pool2d(mask.float(), 3, stride=1, padding=1) > 0
    assert changed.any(dim=(1, 2, 3)).all(), "the attribute must be visible on every face"
    assert not (changed & ~grown).any()


def test_global_attributes_change_their_colour(world):
    factors = sample_factors(range(16), world)
    dark, light = (
        render(with_attribute(factors, "light_hair", 0.0), world),
        render(with_attribute(factors, "light_hair", 1.0), world),
    )
    hair = region_masks(factors, world)["hair"]
    brightness_gain = ((light - dark).mean(dim=1, keepdim=True) * hair).sum() / hair.sum()
    assert brightness_gain > 0.4


def test_region_masks_partition_the_image_sensibly(world):
    factors = sample_factors(range(8), world)
    masks = region_masks(factors, world)
    assert set(masks) == {"mouth", "eyes", "hair", "face", "background"}
    for mask in masks.values():
        assert mask.shape == (8, 1, 32, 32)
        assert mask.sum(dim=(1, 2, 3)).min() > 0
    assert not (masks["face"].bool() & masks["background"].bool()).any()


def test_rendering_is_fast_enough_for_on_the_fly_training(world):
    factors = sample_factors(range(256), world)
    images = render(factors, world, chunk_size=64)
    assert torch.equal(images[:64], render(Factors(factors.binary[:64], factors.continuous[:64]), world))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"resolution": 30}, "toyfaces.resolution"),
        ({"supersample": 0}, "toyfaces.supersample"),
        (
            {"probabilities": {**ToyFacesConfig().probabilities, "smiling": 1.5}},
            "toyfaces.probabilities.smiling",
        ),
        ({"probabilities": {"smiling": 0.5}}, "toyfaces.probabilities"),
        ({"correlations": [CorrelatedPair("smiling", "moustache", 0.5)]}, "moustache"),
        ({"correlations": [CorrelatedPair("smiling", "light_hair", 1.5)]}, "rho=1.5"),
    ],
)
def test_invalid_world_is_one_line_naming_the_key(world, change, key):
    with pytest.raises(ConfigError) as error:
        sample_factors([0], dataclasses.replace(world, **change))
    assert key in str(error.value) and "\n" not in str(error.value)


def test_toy_quality_statistics_on_decisions_with_known_answers():
    """Frequencies, the pair's correlation and the gaps of toy_quality, on probabilities built to known decisions:
    smiling and light_hair decided together on the first half (correlation 1), every other attribute on a quarter."""
    from pipeline.steps.toy_quality import attribute_statistics

    world = ToyFacesConfig()
    probabilities = torch.full((8, len(BINARY_ATTRIBUTES)), 0.05)
    probabilities[:2] = 0.95
    for name in ("smiling", "light_hair"):
        probabilities[:4, BINARY_ATTRIBUTES.index(name)] = 0.95
    probabilities[7, BINARY_ATTRIBUTES.index("hat")] = 0.6  # decided positive, but not confidently
    stats = attribute_statistics(probabilities, world, confidence=0.9)
    expected = {name: 0.5 if name in ("smiling", "light_hair") else 0.25 for name in BINARY_ATTRIBUTES}
    expected["hat"] += 0.125
    assert stats["frequency"] == pytest.approx(expected)
    assert stats["confident_fraction"] == pytest.approx(7 / 8)
    pair = world.correlations[0]
    key = f"{pair.first}-{pair.second}"
    assert set(stats["correlation"]) == {key} and key == "smiling-light_hair"
    assert stats["correlation"][key] == pytest.approx(1.0)
    assert stats["correlation_gap"] == pytest.approx(abs(stats["correlation"][key] - pair.rho))
    gaps = [abs(expected[name] - world.probabilities[name]) for name in BINARY_ATTRIBUTES]
    assert stats["max_marginal_gap"] == pytest.approx(max(gaps))
