"""Tests for pipeline.evaluation.judge (per-sample outcomes of an edit, Wilson intervals, operating scale) and
pipeline.evaluation.broken (per-image realism checks validated on constructed broken images)."""

import math

import pytest
import torch

from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.evaluation.broken import BrokenCheck, BrokenConfig, KNNRealismScore, RerenderScore, make_broken_check
from pipeline.evaluation.judge import (
    CurvePoint,
    EditOutcome,
    Rate,
    attribute_dependency,
    attributes_changed,
    best_curve,
    decisions,
    operating_point,
    stop_at_flip,
    wilson_interval,
)
from pipeline.evaluation.measures import ClassifierFeatures
from pipeline.io.errors import ConfigError
from pipeline.io.params import load_section
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, Factors, ToyFacesConfig, render, sample_factors
from tests.helpers import CLASSIFIER, ROOT

NAMES = ["smiling", "hat", "glasses"]


def _outcome(before, after, broken=None, target=0, towards=True) -> EditOutcome:
    before, after = torch.tensor(before, dtype=torch.bool), torch.tensor(after, dtype=torch.bool)
    broken = torch.zeros(len(before), dtype=torch.bool) if broken is None else torch.tensor(broken)
    return EditOutcome(before, after, broken, target, towards)


def test_wilson_interval_matches_the_closed_form_and_its_edge_cases() -> None:
    low, high = wilson_interval(8, 10)
    # (k + z²/2)/(n + z²) ± z sqrt(k(n-k)/n + z²/4)/(n + z²), z = 1.96: the textbook [0.490, 0.943]
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 64)
    assert low == 0.0 and 0.0 < high < 0.06
    low, high = wilson_interval(64, 64)
    assert high == 1.0 and 0.94 < low < 1.0
    with pytest.raises(ConfigError, match="3 successes in 2 trials"):
        wilson_interval(3, 2)


def test_rate_counts_hits_among_the_eligible_samples_only() -> None:
    rate = Rate.of(torch.tensor([True, True, False, True]), torch.tensor([True, False, True, True]))
    assert (rate.successes, rate.trials) == (2, 3)
    entry = rate.as_dict()
    assert entry["rate"] == pytest.approx(2 / 3) and entry["low"] < 2 / 3 < entry["high"] and entry["n"] == 3
    assert Rate(0, 0).as_dict()["rate"] is None


def test_an_edit_that_flips_two_attributes_is_a_flip_but_not_a_clean_flip() -> None:
    # four samples without a smile (eligible for "up") and one with it (not eligible)
    before = [[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    after = [[1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 1, 0]]
    outcome = _outcome(before, after, target=0, towards=True)
    assert outcome.eligible.tolist() == [True, True, True, True, False]
    assert outcome.flipped[:4].tolist() == [True, True, True, False]
    assert outcome.clean[:4].tolist() == [True, False, True, False]  # sample 1 also gained a hat
    rates = outcome.rates(NAMES)
    assert rates["flip"]["rate"] == pytest.approx(3 / 4) and rates["clean_flip"]["rate"] == pytest.approx(2 / 4)
    assert rates["off_target"]["hat"]["rate"] == pytest.approx(1 / 4)  # the ineligible sample's hat is not counted
    assert rates["off_target"]["glasses"]["rate"] == 0.0 and rates["flip"]["n"] == 4


def test_a_broken_image_is_a_failure_whatever_its_readings() -> None:
    outcome = _outcome([[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [1, 0, 0]], broken=[True, False])
    assert outcome.flipped.tolist() == [False, True] and outcome.clean.tolist() == [False, True]
    rates = outcome.rates(NAMES)
    assert rates["flip"]["rate"] == 0.5 and rates["broken"]["rate"] == 0.5


def test_an_edit_away_from_the_attribute_reads_samples_that_have_it() -> None:
    outcome = _outcome([[1, 0, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 0], [1, 0, 1], [0, 0, 0]], towards=False)
    assert outcome.eligible.tolist() == [True, True, False]
    assert outcome.rates(NAMES)["clean_flip"]["rate"] == 0.5


def _point(scale: float, outcome: EditOutcome, change: float = 0.1) -> CurvePoint:
    return CurvePoint(scale, outcome, torch.full((len(outcome.before),), change))


def test_best_curve_labels_an_unsupervised_direction_by_its_cleanest_flip() -> None:
    before = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    after = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)  # removes glasses
    broken = torch.zeros(4, dtype=torch.bool)
    candidates = [
        [_point(1.0, EditOutcome(before, after, broken, target, towards))]
        for target in range(3)
        for towards in (True, False)
    ]
    curve, point, feasible = best_curve(candidates, max_broken=0.05)
    assert (point.outcome.target, point.outcome.towards) == (2, False) and point.outcome.clean_flip_rate() == 0.75
    assert feasible and curve[0] is point
    with pytest.raises(ConfigError, match="no candidate"):
        best_curve([], max_broken=0.05)


def test_operating_point_is_the_cleanest_scale_within_the_broken_budget() -> None:
    clean = _outcome([[0, 0, 0]] * 4, [[1, 0, 0]] * 4)
    partly = _outcome([[0, 0, 0]] * 4, [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    damaged = _outcome([[0, 0, 0]] * 4, [[1, 0, 0]] * 4, broken=[True, False, False, False])
    curve = [_point(1.0, partly, 0.1), _point(2.0, clean, 0.2), _point(3.0, damaged, 0.4)]
    point, feasible = operating_point(curve, max_broken=0.05)
    assert point.scale == 2.0 and feasible and point.distortion == pytest.approx(0.2)
    point, feasible = operating_point([_point(3.0, damaged, 0.4)], max_broken=0.05)
    assert point.scale == 3.0 and not feasible


def test_stop_at_flip_takes_each_samples_smallest_flipping_scale() -> None:
    # sample 0 flips cleanly at 1 and drags attribute 1 at 2; sample 1 flips only at 2 (with the drag);
    # sample 2 never flips; sample 3 flips at 1 on a broken image and cleanly at 2
    small = _outcome([[0, 0, 0]] * 4, [[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]], broken=[False, False, False, True])
    large = _outcome([[0, 0, 0]] * 4, [[1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    stopped = stop_at_flip([_point(2.0, large, 0.3), _point(1.0, small, 0.1)])
    assert stopped.flipped.tolist() == [True, True, False, True]
    assert stopped.clean.tolist() == [True, False, False, True]
    assert stopped.after[2].tolist() == [False, False, True]  # never flipped: read at the largest scale
    assert small.clean_flip_rate() == 0.25 and large.clean_flip_rate() == 0.25 and stopped.clean_flip_rate() == 0.5


def test_distortion_is_averaged_over_the_eligible_samples_only() -> None:
    outcome = _outcome([[0, 0, 0], [1, 0, 0]], [[1, 0, 0], [1, 0, 0]])
    assert CurvePoint(1.0, outcome, torch.tensor([0.2, float("nan")])).distortion == pytest.approx(0.2)


def test_mnac_counts_the_other_attributes_changed_per_eligible_unbroken_sample() -> None:
    # four samples edited towards smiling: sample 0 changes hat and glasses, sample 1 nothing else, sample 2 is
    # broken (left out), sample 3 already smiles (not eligible)
    outcome = _outcome(
        [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]],
        [[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1]],
        broken=[False, False, True, False],
    )
    changed = attributes_changed(outcome)
    assert changed["n"] == 2 and changed["mean"] == 1.0  # (2 + 0) / 2: the target is not counted
    # the normal interval: mean -+ 1.96 s / sqrt(n), s = sqrt(2)
    assert changed["high"] - 1.0 == pytest.approx(1.959964 * math.sqrt(2) / math.sqrt(2), rel=1e-5)
    assert attributes_changed(_outcome([[1, 0, 0]], [[1, 0, 0]]))["mean"] is None  # nobody eligible


def test_attribute_dependency_reads_logit_changes_in_units_of_their_spread() -> None:
    outcome = _outcome([[0, 0, 0], [0, 0, 0], [1, 0, 0]], [[1, 0, 0], [1, 1, 0], [1, 0, 0]])
    before = torch.tensor([[-2.0, -1.0, -3.0], [-2.0, -1.0, -3.0], [2.0, -1.0, -3.0]])
    after = torch.tensor([[2.0, -1.0, -2.0], [4.0, 1.0, -3.0], [9.0, 9.0, 9.0]])  # the last sample is not eligible
    spread = torch.tensor([2.0, 0.5, 1.0])
    dependency = attribute_dependency(outcome, before, after, spread, NAMES)
    # hat: |0| / 0.5 and |2| / 0.5 -> mean 2; glasses: |1| / 1 and 0 -> mean 0.5; AD = mean of the two = 1.25
    assert dependency["mean"] == pytest.approx(1.25) and dependency["max"] == pytest.approx(2.0)
    assert dependency["max_attribute"] == "hat"
    assert dependency["target"] == pytest.approx((4 / 2 + 6 / 2) / 2)  # towards the side edited
    away = _outcome([[1, 0, 0]], [[0, 0, 0]], towards=False)
    moved = attribute_dependency(away, torch.tensor([[3.0, 0, 0]]), torch.tensor([[-1.0, 0, 0]]), spread, NAMES)
    assert moved["target"] == pytest.approx(2.0) and moved["mean"] == 0.0


def test_decisions_threshold_the_logits_at_zero() -> None:
    assert decisions(torch.tensor([[-0.1, 0.0, 2.0]])).tolist() == [[False, False, True]]


@pytest.fixture(scope="module")
def toy_world() -> ToyFacesConfig:
    from pipeline.io.params import load_params

    return load_section("toyfaces", ToyFacesConfig, load_params(ROOT / "params.yaml"))


@pytest.fixture(scope="module")
def toy_classifier():
    return load_classifier(ClassifierConfig(name="toyfaces", path=str(CLASSIFIER)))


def _faces(world: ToyFacesConfig, start: int, count: int) -> tuple[torch.Tensor, Factors]:
    factors = sample_factors(range(start, start + count), world)
    return render(factors, world), factors


def test_rerender_flags_blends_and_noise_but_not_faces_or_clean_world_edits(toy_world, toy_classifier) -> None:
    calibration, _ = _faces(toy_world, 80_000_000, 128)
    check = BrokenCheck(RerenderScore(toy_classifier, toy_world), calibration, quantile=0.99, margin=1.25)
    faces, factors = _faces(toy_world, 81_000_000, 64)
    others, _ = _faces(toy_world, 82_000_000, 64)
    # a clean edit: the same faces with one attribute switched, drawn by the world itself
    smile = BINARY_ATTRIBUTES.index("smiling")
    edited_binary = factors.binary.clone()
    edited_binary[:, smile] = 1 - edited_binary[:, smile]
    clean_edits = render(Factors(edited_binary, factors.continuous), toy_world)
    blends = 0.5 * faces + 0.5 * others
    noisy = (faces + 0.3 * torch.randn(faces.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert check(faces).float().mean() <= 0.05
    assert check(clean_edits).float().mean() <= 0.05
    assert check(blends).float().mean() >= 0.6  # measured 0.73: a blend of two similar faces can pass
    assert check(noisy).float().mean() >= 0.9
    assert check.describe()["detector"] == "rerender" and check.threshold > 0


def test_knn_realism_score_is_one_inside_a_reference_ball(toy_classifier, toy_world) -> None:
    reference, _ = _faces(toy_world, 83_000_000, 16)
    score = KNNRealismScore(ClassifierFeatures(toy_classifier), reference, k=1, prune_fraction=0.0)
    own = score(reference)  # a reference point lies at distance 0 from itself: realism is unbounded
    assert torch.all(own < 1e-6)
    assert math.isfinite(float(score(torch.rand(4, 3, 32, 32)).max()))
    with pytest.raises(ConfigError, match="knn_k=16"):
        KNNRealismScore(ClassifierFeatures(toy_classifier), reference, k=16, prune_fraction=0.0)


def test_auto_detector_picks_rerender_for_toyfaces_and_knn_without_a_world(toy_classifier, toy_world) -> None:
    images, _ = _faces(toy_world, 84_000_000, 24)
    features = ClassifierFeatures(toy_classifier)
    cfg = BrokenConfig()
    reference, calibration = images[:12], images[12:]
    assert make_broken_check(cfg, toy_classifier, features, toy_world, reference, calibration).score.name == "rerender"
    assert make_broken_check(cfg, toy_classifier, features, None, reference, calibration).score.name == "knn"
    with pytest.raises(ConfigError, match=r"evaluate\.broken\.detector"):
        BrokenConfig(detector="vibes")


@pytest.mark.skipif(not (ROOT / "models/toyfaces/ddpm").is_dir(), reason="committed ToyFaces DDPM absent")
def test_rerender_flags_samples_pushed_far_in_h_but_not_the_models_own(toy_world, toy_classifier) -> None:
    """Decodes of the committed model with a random h push of norm 200 at every step (about twice a supervised
    direction's length) are washed-out blobs; unedited decodes of other seeds are faces."""
    from pipeline.diffusion.hspace import hspace_shape
    from pipeline.diffusion.models import ModelConfig, open_model
    from pipeline.diffusion.sampling import SamplerConfig
    from pipeline.editing.samples import decode_images, held_out

    model = open_model(ModelConfig(source=str(ROOT / "models/toyfaces/ddpm"), clip_sample=True), "cpu")
    sampler = SamplerConfig(steps=20, eta=0.0, batch_size=64, injection="asyrp")
    calibration = held_out(model, sampler, 97_000_000, 64)
    check = BrokenCheck(
        RerenderScore(toy_classifier, toy_world), decode_images(model, calibration.x_T, None, sampler), 0.99, 1.25
    )
    samples = held_out(model, sampler, 96_000_000, 16)
    unedited = decode_images(model, samples.x_T, None, sampler)
    shape = hspace_shape(model.unet, "after", model.sample_shape)
    push = torch.randn(16, 20, *shape, generator=torch.Generator().manual_seed(0))
    push *= 200.0 / push.flatten(2).norm(dim=2)[..., None, None, None]
    pushed = decode_images(model, samples.x_T, None, sampler, push, "after")
    assert check(unedited).float().mean() <= 0.1
    assert check(pushed).float().mean() >= 0.9  # measured 1.0 (the pixel RMS score flagged 0.47)
