"""Supervised mean-difference directions and the joint conditional projection
(pipeline.directions.supervised)."""

from pathlib import Path

import pytest
import torch

from pipeline.directions import Directions, Origin, load_directions, save_directions
from pipeline.directions.supervised import (
    coefficient_t_values,
    conditional_directions,
    joint_regression,
    keep_significant,
    logistic_probe,
    mean_difference,
    normalise_steps,
    probe_direction,
    project_each_out,
    project_out,
    restrict_window,
    share_over_steps,
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


def correlated_world(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A world where the answer is known: 4 binary attributes, the first two drawn with correlation about 0.6,
    and h = sum_a y_a c_a + small noise with random columns c_a. Returns (labels [N, 4], columns [4, T, *h],
    samples [N, T, *h])."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(count, generator=generator) < 0.5
    follows = torch.rand(count, generator=generator) < 0.8
    second = torch.where(follows, first, torch.rand(count, generator=generator) < 0.5)
    others = torch.rand(count, 2, generator=generator) < torch.tensor([0.3, 0.6])
    labels = torch.cat([first[:, None], second[:, None], others], dim=1)
    columns = random_directions(4, seed=seed + 1)
    samples = torch.einsum("na,a...->n...", labels.double(), columns)
    samples = samples + 0.01 * torch.randn(samples.shape, generator=generator, dtype=torch.float64)
    return labels, columns, samples


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    """Cosine of two tensors over all entries."""
    return float(torch.nn.functional.cosine_similarity(first.reshape(-1), second.reshape(-1), dim=0))


def test_joint_regression_recovers_each_column_where_the_mean_difference_does_not() -> None:
    labels, columns, samples = correlated_world(2000)
    positive_sums = torch.stack([samples[labels[:, a]].sum(0) for a in range(4)])
    joint = joint_regression(samples.sum(0), positive_sums, labels)
    for a in range(4):
        assert cosine(joint[a], columns[a]) > 0.999
    plain = torch.stack(
        [mean_difference(samples[labels[:, a]].mean(0), samples[~labels[:, a]].mean(0)) for a in range(4)]
    )
    assert cosine(plain[0], columns[0]) < 0.9 and cosine(plain[1], columns[1]) < 0.9  # the correlated pair drags
    assert cosine(plain[2], columns[2]) > 0.99  # an independent attribute is fine either way
    design = torch.cat([torch.ones(len(labels), 1, dtype=torch.float64), labels.double()], dim=1)
    reference = torch.linalg.lstsq(design, samples.reshape(len(samples), -1)).solution[1:]
    torch.testing.assert_close(joint.reshape(4, -1), reference, rtol=1e-9, atol=1e-9)


def test_joint_regression_refuses_collinear_labels() -> None:
    labels, _, samples = correlated_world(200)
    labels = torch.cat([labels, labels[:, :1]], dim=1)
    positive_sums = torch.stack([samples[labels[:, a]].sum(0) for a in range(5)])
    with pytest.raises(ConfigError, match=r"^joint_regression: the labels are collinear \(rank 5 of 6"):
        joint_regression(samples.sum(0), positive_sums, labels)


def test_logistic_probe_finds_the_separating_direction_and_keeps_the_unit() -> None:
    generator = torch.Generator().manual_seed(3)
    count, dim = 400, 30
    informative = torch.nn.functional.normalize(torch.randn(dim, generator=generator, dtype=torch.float64), dim=0)
    labels = torch.rand(count, generator=generator) < 0.5
    features = torch.randn(count, dim, generator=generator, dtype=torch.float64) + 3.0 * labels[:, None] * informative
    probe = logistic_probe(features, labels, l2=1e-2, iterations=100)
    assert cosine(probe, informative) > 0.9
    difference = features[labels].mean(0) - features[~labels].mean(0)
    along = probe_direction(probe, difference)
    assert cosine(along, probe) > 0.999999
    assert float(along @ informative) == pytest.approx(float(difference @ informative), rel=0.2)
    with pytest.raises(ConfigError, match="one class only"):
        logistic_probe(features, torch.zeros(count), l2=1e-2, iterations=5)


def test_project_each_out_is_orthogonal_to_all_other_attributes() -> None:
    directions = random_directions(3)
    projected = project_each_out(directions)
    for a in range(3):
        for b in range(3):
            if a != b:
                assert abs(inner(projected[a], directions[b])) < 1e-9
    assert torch.equal(project_each_out(directions[:1]), directions[:1])


def test_window_and_step_normalisation() -> None:
    directions = random_directions(2)
    windowed = restrict_window(directions, [0.25, 0.75])
    assert torch.equal(windowed[:, 1:3], directions[:, 1:3]) and not windowed[:, [0, 3]].any()
    assert restrict_window(directions, None) is directions
    with pytest.raises(ConfigError, match=r"^window \[0.5, 2.0\]: expected \[start, end\) fractions"):
        restrict_window(directions, [0.5, 2.0])
    with pytest.raises(ConfigError, match=r"^window \[0.5, 0.55\]: holds no step of a 4-step grid"):
        restrict_window(directions, [0.5, 0.55])
    even = normalise_steps(windowed)
    step_norms = even.reshape(2, STEPS, -1).norm(dim=2)
    torch.testing.assert_close(step_norms[:, 1], step_norms[:, 2])
    assert not step_norms[:, [0, 3]].any()
    torch.testing.assert_close(even.reshape(2, -1).norm(dim=1), windowed.reshape(2, -1).norm(dim=1))
    shared = share_over_steps(windowed)
    torch.testing.assert_close(shared[:, 1], (directions[:, 1] + directions[:, 2]) / 2)
    assert torch.equal(shared[:, 1], shared[:, 2]) and not shared[:, [0, 3]].any()


def test_step_estimators_from_the_store_match_in_memory_references(tmp_path: Path) -> None:
    from pipeline.data.store_writing import synthetic_store
    from pipeline.steps.supervised import SupervisedConfig, estimate, labelled_subsets

    store = synthetic_store(tmp_path / "store", 96, h_shape=(2, 2, 2), steps=3, shard_size=40, h_dtype="float32")
    samples = store.load("h", range(96)).double()
    generator = torch.Generator().manual_seed(5)
    labels = torch.rand(96, 3, generator=generator) < torch.tensor([0.5, 0.3, 0.6])
    labels[:, 1] |= samples[:, 0, 0, 0, 0] > 1.0  # a label that depends on h

    joint = estimate(store, labels, None, SupervisedConfig(estimator="joint_regression", significance=None), "abc")
    design = torch.cat([torch.ones(96, 1, dtype=torch.float64), labels.double()], dim=1)
    reference = torch.linalg.lstsq(design, samples.reshape(96, -1)).solution[1:].reshape(joint.shape)
    torch.testing.assert_close(joint, reference, rtol=1e-6, atol=1e-6)

    subsets = labelled_subsets(labels, 10, 0, ["a", "b", "c"])
    for a, subset in enumerate(subsets):
        assert len(subset) == 20 and int(labels[subset, a].sum()) == 10
    few = estimate(
        store,
        labels,
        subsets,
        SupervisedConfig(estimator="mean_difference", samples_per_side=10, significance=None),
        "abc",
    )
    for a, subset in enumerate(subsets):
        chosen, side = samples[subset], labels[subset, a]
        torch.testing.assert_close(few[a], chosen[side].mean(0) - chosen[~side].mean(0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match=r"samples_per_side=60: attribute 'a' has only \d+ samples with label 1"):
        labelled_subsets(labels, 60, 0, ["a", "b", "c"])

    significant = estimate(store, labels, None, SupervisedConfig(estimator="joint_regression", significance=1.5), "abc")
    squares = samples.square().sum(0)
    positive_sums = torch.stack([samples[labels[:, a]].sum(0) for a in range(3)])
    t_values = coefficient_t_values(samples.sum(0), positive_sums, squares, labels)
    torch.testing.assert_close(significant, torch.where(t_values.abs() > 1.5, reference, 0.0), rtol=1e-6, atol=1e-6)
    assert 0 < int((significant == 0).sum()) < significant.numel()

    probed = estimate(
        store, labels, None, SupervisedConfig(estimator="logistic", probe_iterations=20, significance=None), "abc"
    )
    plain = estimate(store, labels, None, SupervisedConfig(estimator="mean_difference", significance=None), "abc")
    flat_probed, flat_plain = probed.reshape(3, 3, -1), plain.reshape(3, 3, -1)
    assert ((flat_probed * (flat_plain - flat_probed)).sum(-1).abs() < 1e-8).all()  # an orthogonal projection per step
    assert cosine(probed[1, 0], plain[1, 0]) > 0.5  # the h-dependent label's probe follows its signal


def test_t_values_match_ordinary_least_squares_and_the_two_sample_t_test() -> None:
    from scipy import stats

    labels, _, samples = correlated_world(300, seed=4)
    samples = samples + torch.randn(samples.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    flat = samples.reshape(len(samples), -1)
    positive_sums = torch.stack([samples[labels[:, a]].sum(0) for a in range(4)])
    squares = samples.square().sum(0)
    t_values = coefficient_t_values(samples.sum(0), positive_sums, squares, labels).reshape(4, -1)
    design = torch.cat([torch.ones(len(labels), 1, dtype=torch.float64), labels.double()], dim=1)
    solution = torch.linalg.lstsq(design, flat).solution
    residual = flat - design @ solution
    variance = residual.square().sum(0) / (len(flat) - design.shape[1])
    errors = (variance[None] * torch.diagonal(torch.linalg.inv(design.T @ design))[1:, None]).sqrt()
    torch.testing.assert_close(t_values, solution[1:] / errors, rtol=1e-8, atol=1e-8)

    single = coefficient_t_values(samples.sum(0), positive_sums[2:3], squares, labels[:, 2:3]).reshape(-1)
    reference = stats.ttest_ind(flat[labels[:, 2]].numpy(), flat[~labels[:, 2]].numpy(), equal_var=True).statistic
    torch.testing.assert_close(single, torch.from_numpy(reference), rtol=1e-8, atol=1e-8)

    kept = keep_significant(samples[0], t_values[0].reshape(samples.shape[1:]), 3.0)
    assert torch.equal(kept != 0, (t_values[0].abs() > 3.0).reshape(kept.shape) & (samples[0] != 0))
