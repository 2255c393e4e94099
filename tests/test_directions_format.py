"""The directions file format (pipeline.directions.format)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.hspace import hspace_shape
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import decode, initial_noise
from pipeline.directions import Directions, Expected, Origin, load_directions, save_directions
from pipeline.io.errors import ConfigError


def h_directions(steps: int = 4, h_shape: tuple[int, ...] = (2, 3, 3), **overrides: object) -> Directions:
    """Three per-step h-space directions over ``steps`` steps with every optional field set."""
    generator = torch.Generator().manual_seed(0)
    fields: dict[str, object] = {
        "directions": torch.randn(3, steps, *h_shape, generator=generator),
        "method": "pca_per_step",
        "space": "h",
        "names": ["pc0", "pc1", "pc2"],
        "origin": Origin(
            model_id="toy/ddpm",
            hspace_location="after",
            sampler_steps=steps,
            eta=1.0,
            timesteps=torch.arange(steps - 1, -1, -1, dtype=torch.int64) * 250,
            steps=torch.arange(steps, dtype=torch.int64),
        ),
        "singular_values": torch.rand(3, steps, generator=generator, dtype=torch.float64),
        "scales": torch.rand(3, steps, generator=generator),
        "extra": {"explained_variance_ratio": [[0.5, 0.25]], "note": "é", "nested": {"a": [1, None, True]}},
    }
    fields.update(overrides)
    return Directions(**fields)


def assert_same(loaded: Directions, original: Directions) -> None:
    assert torch.equal(loaded.directions, original.directions)
    assert loaded.directions.dtype == original.directions.dtype
    for name in ("singular_values", "scales"):
        mine, theirs = getattr(loaded, name), getattr(original, name)
        assert (mine is None and theirs is None) or (torch.equal(mine, theirs) and mine.dtype == theirs.dtype)
    for name in ("timesteps", "steps"):
        mine, theirs = getattr(loaded.origin, name), getattr(original.origin, name)
        assert (mine is None and theirs is None) or (torch.equal(mine, theirs) and mine.dtype == torch.int64)
    assert (loaded.method, loaded.space, loaded.names, loaded.extra) == (
        original.method,
        original.space,
        original.names,
        original.extra,
    )
    for name in ("model_id", "hspace_location", "sampler_steps", "eta"):
        assert getattr(loaded.origin, name) == getattr(original.origin, name)


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    original = h_directions()
    save_directions(tmp_path / "pca.safetensors", original)
    assert_same(load_directions(tmp_path / "pca.safetensors"), original)
    assert [path.name for path in tmp_path.iterdir()] == ["pca.safetensors"]  # nothing temporary left


def test_round_trip_of_x_space_directions_with_nothing_optional(tmp_path: Path) -> None:
    original = Directions(
        directions=torch.randn(2, 3, 8, 8, dtype=torch.float64),
        method="noise_supervised",
        space="x_T",
        names=["smile", "glasses"],
        origin=Origin(model_id="toy/ddpm"),
        singular_values=torch.rand(2),
    )
    save_directions(tmp_path / "noise.safetensors", original)
    loaded = load_directions(tmp_path / "noise.safetensors")
    assert_same(loaded, original)
    assert loaded.num_steps is None and loaded.item_shape == (3, 8, 8)


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    save_directions(path, h_directions())
    replacement = h_directions(names=["a", "b", "c"])
    save_directions(path, replacement)
    assert load_directions(path).names == ["a", "b", "c"]


def test_metadata_is_readable_strings(tmp_path: Path) -> None:
    from safetensors import safe_open

    save_directions(tmp_path / "d.safetensors", h_directions())
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as reader:
        metadata = reader.metadata()
    assert metadata["method"] == "pca_per_step" and metadata["model_id"] == "toy/ddpm"
    assert metadata["format_version"] == "1" and json.loads(metadata["names"]) == ["pc0", "pc1", "pc2"]


@pytest.mark.parametrize(
    ("expect", "pattern"),
    [
        (Expected(model_id="other/model"), r"was made for model_id 'toy/ddpm', not 'other/model'$"),
        (Expected(hspace_location="before"), r"was made at hspace_location 'after', not 'before'$"),
        (Expected(h_shape=(512, 8, 8)), r"was made for h_shape \(2, 3, 3\), not \(512, 8, 8\)$"),
        (Expected(num_steps=50), r"was made for num_steps 4 \(sampler steps\), not 50$"),
    ],
)
def test_expect_mismatch_is_one_line_naming_the_field(tmp_path: Path, expect: Expected, pattern: str) -> None:
    path = tmp_path / "d.safetensors"
    save_directions(path, h_directions())
    with pytest.raises(ConfigError, match=f"^directions file {path} " + pattern) as error:
        load_directions(path, expect=expect)
    assert "\n" not in str(error.value)


def test_matching_expect_passes(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    save_directions(path, h_directions())
    expect = Expected(model_id="toy/ddpm", hspace_location="after", h_shape=(2, 3, 3), num_steps=4)
    assert load_directions(path, expect=expect).num_directions == 3


def test_h_shape_expected_of_x_space_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    directions = Directions(
        directions=torch.zeros(1, 3, 4, 4), method="pullback", space="x_t", names=["v0"], origin=Origin("m")
    )
    save_directions(path, directions)
    with pytest.raises(ConfigError, match=r"in space 'x_t', not 'h'"):
        load_directions(path, expect=Expected(h_shape=(2, 3, 3)))


@pytest.mark.parametrize("keep_bytes", [-7, 40, 5])
def test_truncated_file_is_one_line_error_naming_it(tmp_path: Path, keep_bytes: int) -> None:
    path = tmp_path / "d.safetensors"
    save_directions(path, h_directions())
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(ConfigError, match=f"^directions file {path}: unreadable or truncated") as error:
        load_directions(path)
    assert "\n" not in str(error.value)


def test_missing_foreign_and_future_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"not found$"):
        load_directions(tmp_path / "absent.safetensors")
    monkeypatch.chdir(tmp_path)  # a clone before its first dvc repro: the study's own files are named with their stage
    with pytest.raises(ConfigError, match=r"^directions file directions/jacobian.safetensors: not found; make it with: "
                       r"dvc repro jacobian$"):  # fmt: skip
        load_directions("directions/jacobian.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"directions": torch.zeros(1, 2, 3)}, str(foreign))
    with pytest.raises(ConfigError, match=r"not a directions file"):
        load_directions(foreign)
    future = tmp_path / "future.safetensors"
    save_file({"directions": torch.zeros(1, 2, 3)}, str(future), {"format": "hspace-directions", "format_version": "2"})
    with pytest.raises(ConfigError, match=r"format version '2', this code reads version 1$"):
        load_directions(future)
    incomplete = tmp_path / "incomplete.safetensors"
    save_file(
        {"directions": torch.zeros(1, 2, 3)}, str(incomplete), {"format": "hspace-directions", "format_version": "1"}
    )
    with pytest.raises(ConfigError, match=r"metadata lacks 'names'$"):
        load_directions(incomplete)


def test_invalid_contents_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"^method 'magic': unknown"):
        h_directions(method="magic")
    with pytest.raises(ConfigError, match=r"^names \['a'\]: expected 3 strings"):
        h_directions(names=["a"])
    with pytest.raises(ConfigError, match=r"contain duplicates"):
        h_directions(names=["a", "a", "b"])
    with pytest.raises(ConfigError, match=r"^scales shape \(3, 5\): expected one of \[\(3,\), \(3, 4\)\]"):
        h_directions(scales=torch.ones(3, 5))
    with pytest.raises(ConfigError, match=r"^directions step axis 4: expected sampler_steps = 10"):
        h_directions(origin=Origin("m", "after", sampler_steps=10))
    with pytest.raises(ConfigError, match=r"^hspace_location: required"):
        h_directions(origin=Origin("m"))
    with pytest.raises(ConfigError, match=r"^extra: not JSON-serialisable"):
        h_directions(extra={"tensor": torch.zeros(1)})


def test_direction_and_delta_use_the_natural_unit() -> None:
    directions = h_directions()
    torch.testing.assert_close(directions.direction("pc1"), directions.directions[1])
    expected = 2.5 * directions.scales[1].reshape(4, 1, 1, 1) * directions.directions[1]
    torch.testing.assert_close(directions.delta(1, 2.5), expected)
    one_scale = h_directions(scales=torch.tensor([2.0, 3.0, 4.0]))
    torch.testing.assert_close(one_scale.delta("pc2", -1.0), -4.0 * one_scale.directions[2])
    raw = h_directions(scales=None)
    torch.testing.assert_close(raw.delta(0, 0.5), 0.5 * raw.directions[0])
    with pytest.raises(ConfigError, match=r"^direction 'smile': not among"):
        raw.delta("smile", 1.0)
    with pytest.raises(ConfigError, match=r"^direction index 3: outside \[0, 3\)"):
        raw.direction(3)


def test_delta_fills_uncovered_steps_with_zeros() -> None:
    origin = Origin("m", "after", sampler_steps=5, steps=torch.tensor([0, 3]))
    directions = h_directions(steps=2, origin=origin, scales=None, singular_values=None)
    delta = directions.delta(0, 1.0)
    assert delta.shape == (5, 2, 3, 3)
    torch.testing.assert_close(delta[[0, 3]], directions.directions[0])
    assert not delta[[1, 2, 4]].any()


def test_delta_is_accepted_by_decode(tiny_model: DiffusionModel, single_thread: None) -> None:
    steps = 2
    h_shape = hspace_shape(tiny_model.unet, "after", tiny_model.sample_shape)
    directions = h_directions(
        steps=steps, h_shape=h_shape, origin=Origin(tiny_model.model_id, "after", sampler_steps=steps)
    )
    delta = directions.delta(0, 1.0)
    assert delta.shape == (steps, *h_shape)
    x_T, _ = initial_noise(tiny_model.sample_shape, [0], steps, 0.0)
    edited = decode(tiny_model, x_T, settings=DecodeSettings(steps=steps), delta_h=delta, capture_steps=None)
    plain = decode(tiny_model, x_T, settings=DecodeSettings(steps=steps), capture_steps=None)
    assert not torch.equal(edited.x_0, plain.x_0)
