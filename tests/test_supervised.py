"""Supervised mean-difference directions and the joint conditional projection
(pipeline.directions.supervised)."""

from pathlib import Path

import pytest
import torch

from pipeline.directions import Directions, Origin, load_directions, save_directions
from pipeline.directions.supervised import (
    conditional_directions,
    mean_difference,
    project_out,
    supervised_directions,
)
from pipeline.io.errors import ConfigError

STEPS, H_SHAPE = 4, (3, 2, 2)
ORIGIN = Origin(model_id="toy/ddpm", hspace_location="after", sampler_steps=STEPS, eta=0.0)


def random_directions(count: int, seed: int = 0) -> torch.Tensor:
    """[count, T, *h_shape] float64 random (generically non-orthogonal) directions."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, STEPS, *H_SHAPE, generator=generator, dtype=torch.float64)


def inner(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Inner product over all entries (all steps together)."""
    return (first * second).sum()


def sequential_projection(target: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """Remove one condition at a time (the reference's non-equivalent helper)."""
    for condition in conditions:
        target = target - inner(target, condition) / inner(condition, condition) * condition
    return target


def test_mean_difference_points_to_more_of_the_attribute() -> None:
    positive, negative = torch.full((STEPS, *H_SHAPE), 2.0), torch.ones(STEPS, *H_SHAPE)
    assert torch.equal(mean_difference(positive, negative), torch.ones(STEPS, *H_SHAPE))
    with pytest.raises(ConfigError, match=r"^group means of shapes \(4, 3, 2, 2\) and \(3, 2, 2\): must match"):
        mean_difference(positive, negative[0])


def test_supervised_directions_for_all_attributes() -> None:
    positive = {"smile": torch.ones(STEPS, *H_SHAPE), "glasses": torch.full((STEPS, *H_SHAPE), 3.0)}
    negative = {"glasses": torch.ones(STEPS, *H_SHAPE), "smile": torch.zeros(STEPS, *H_SHAPE)}
    directions = supervised_directions(positive, negative, ORIGIN, extra={"positives": {"smile": 10}})
    assert directions.method == "supervised" and directions.space == "h"
    assert directions.names == ["smile", "glasses"] and directions.scales is None
    assert torch.equal(directions.direction("glasses"), torch.full((STEPS, *H_SHAPE), 2.0))
    assert torch.equal(directions.delta("smile", -0.5), torch.full((STEPS, *H_SHAPE), -0.5))
    assert directions.extra == {"positives": {"smile": 10}}


def test_noise_space_directions() -> None:
    noise_origin = Origin(model_id="toy/ddpm", sampler_steps=STEPS, eta=1.0)
    directions = supervised_directions(
        {"smile": torch.ones(3, 8, 8)}, {"smile": torch.zeros(3, 8, 8)}, noise_origin, space="x_T"
    )
    assert directions.method == "noise_supervised" and directions.directions.shape == (1, 3, 8, 8)
    assert directions.delta(0, 2.0).shape == (3, 8, 8)


def test_supervised_input_errors() -> None:
    with pytest.raises(ConfigError, match=r"^attributes \['age'\]: must have both"):
        supervised_directions({"age": torch.ones(2)}, {}, ORIGIN)
    with pytest.raises(ConfigError, match=r"^attribute 'age': group means of shapes"):
        supervised_directions({"age": torch.ones(STEPS, 2)}, {"age": torch.ones(STEPS, 3)}, ORIGIN)
    with pytest.raises(ConfigError, match=r"^space 'x_t'"):
        supervised_directions({"age": torch.ones(2)}, {"age": torch.ones(2)}, ORIGIN, space="x_t")


def test_projection_is_orthogonal_to_every_condition() -> None:
    target, *conditions = random_directions(4)
    conditions = torch.stack(conditions)
    projected = project_out(target, conditions)
    assert projected.shape == target.shape and projected.dtype == target.dtype
    for condition in conditions:
        assert abs(inner(projected, condition)) < 1e-10 * target.norm() * condition.norm()
    # one joint projection over all steps, not one per step: single steps are not orthogonal
    assert max(abs(inner(projected[step], conditions[0][step])) for step in range(STEPS)) > 1e-3


def test_projection_keeps_the_orthogonal_part_unchanged() -> None:
    target, *conditions = random_directions(3, seed=1)
    conditions = torch.stack(conditions)
    basis = torch.linalg.qr(conditions.reshape(2, -1).T).Q
    orthogonal = target - (basis @ (basis.T @ target.reshape(-1))).reshape(target.shape)
    torch.testing.assert_close(project_out(orthogonal, conditions), orthogonal, rtol=0, atol=1e-12)
    mixed = orthogonal + 0.7 * conditions[0] - 2.0 * conditions[1]
    torch.testing.assert_close(project_out(mixed, conditions), orthogonal, rtol=0, atol=1e-12)


def test_joint_differs_from_sequential_unless_conditions_are_orthogonal() -> None:
    target, *conditions = random_directions(3, seed=2)
    conditions = torch.stack(conditions)
    joint, sequential = project_out(target, conditions), sequential_projection(target, conditions)
    assert (joint - sequential).abs().max() > 1e-3
    orthogonal_conditions = torch.linalg.qr(conditions.reshape(2, -1).T).Q.T.reshape(conditions.shape) * 3.0
    torch.testing.assert_close(
        project_out(target, orthogonal_conditions),
        sequential_projection(target, orthogonal_conditions),
        rtol=0,
        atol=1e-12,
    )


def test_rank_deficient_conditions_are_one_line_error_naming_attributes() -> None:
    supervised = Directions(
        directions=torch.cat([random_directions(3, seed=3), random_directions(2, seed=4)[:1] * 0]),
        method="supervised",
        space="h",
        names=["smile", "gender", "age", "zero"],
        origin=ORIGIN,
    )
    supervised.directions[2] = 2 * supervised.directions[1] - supervised.directions[0]
    with pytest.raises(ConfigError, match=r"^condition 'age': linearly dependent on \['smile', 'gender'\]") as error:
        project_out(supervised.direction(3), supervised.directions[:3], condition_names=["smile", "gender", "age"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^condition 'zero': is zero"):
        conditional_directions(supervised, {"smile": ["zero"]})
    with pytest.raises(ConfigError, match=r"^attribute 'smile': cannot be projected out of itself"):
        conditional_directions(supervised, {"smile": ["smile", "age"]})
    with pytest.raises(ConfigError, match=r"^direction 'hat': not among"):
        conditional_directions(supervised, {"smile": ["hat"]})


def test_conditional_directions_record_what_was_removed_and_round_trip(tmp_path: Path) -> None:
    means = random_directions(3, seed=5).to(torch.float32)
    names = ["smile", "gender", "age"]
    supervised = supervised_directions(
        dict(zip(names, means, strict=True)), {name: torch.zeros(STEPS, *H_SHAPE) for name in names}, ORIGIN
    )
    conditional = conditional_directions(supervised, {"smile": ["gender", "age"], "age": ["gender"]})
    assert conditional.method == "supervised_conditional" and conditional.names == ["smile", "age"]
    assert conditional.extra == {
        "projected_out": {"smile": ["gender", "age"], "age": ["gender"]},
        "source_method": "supervised",
    }
    expected = project_out(supervised.direction("smile"), supervised.directions[1:])
    torch.testing.assert_close(conditional.direction("smile"), expected)
    save_directions(tmp_path / "conditional.safetensors", conditional)
    loaded = load_directions(tmp_path / "conditional.safetensors")
    assert torch.equal(loaded.directions, conditional.directions)
    assert loaded.extra == conditional.extra and loaded.names == conditional.names
