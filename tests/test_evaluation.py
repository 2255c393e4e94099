"""The evaluate stage and its measures: bisection, selectivity, SSIM/PSNR, KID, editors, and the stage end to end."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions import Directions, Origin
from pipeline.directions.pullback import guidance_edit, guidance_rows
from pipeline.editing import Editor, GuidedEditor, decode_images, held_out
from pipeline.evaluation.bisection import bisect_scale
from pipeline.evaluation.measures import (
    PSNR_CAP,
    ClassifierFeatures,
    auto_label,
    central_difference,
    kid,
    psnr_per_image,
    selectivity,
    ssim_per_image,
)
from pipeline.evaluation.readout import Judge, Reading, measure
from pipeline.io.errors import ConfigError
from pipeline.io.params import load_params, load_section
from pipeline.steps.evaluate import EvaluateConfig
from pipeline.toyfaces.classifier import ToyFacesClassifier
from stages import evaluate, generate, hstats, jacobian, label, pca, pullback, report, supervised
from tests.helpers import run_study, tiny_study_overrides

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models/toyfaces/classifier"
needs_classifier = pytest.mark.skipif(not CLASSIFIER.is_dir(), reason="committed ToyFaces classifier absent")


# ---------------------------------------------------------------------------------------------- the measures


@pytest.mark.parametrize(
    ("fn", "root"),
    [
        (lambda s: 1.0 - math.exp(-s), -math.log(0.95)),  # concave
        (lambda s: 0.2 * s**2, 0.5),  # convex: a power law, found exactly once bracketed away from 0
        (lambda s: 0.01 * s, 5.0),  # linear, found exactly from the bracket [0, max_scale]
    ],
)
def test_bisection_reaches_the_budget_of_a_monotone_function(fn, root):
    calls = []

    def distortion(scale: float) -> float:
        calls.append(scale)
        return fn(scale)

    result = bisect_scale(distortion, 0.05, max_scale=8.0, steps=20, tolerance=0.01)
    assert abs(result.value - 0.05) <= 0.01 * 0.05 and not result.capped
    assert abs(result.scale - root) < 0.01 * root
    assert calls[0] == 8.0 and len(calls) == len(result.probes) <= 6  # stops once within tolerance
    assert [scale for scale, _ in result.probes] == calls


def test_bisection_never_splits_outside_the_middle_of_the_bracket():
    # A step function: interpolation would always guess the bracket's lower end; the clamp keeps shrinking it.
    result = bisect_scale(lambda s: 0.0 if s < 3.0 else 1.0, 0.5, max_scale=8.0, steps=30, tolerance=0.0)
    assert abs(result.scale - 3.0) < 1e-3 and result.value == 1.0


def test_selectivity_and_auto_label():
    effects = torch.tensor([0.5, -3.0, 0.5, 0.0])
    assert selectivity(effects) == pytest.approx(0.75)
    assert auto_label(effects, ["a", "b", "c", "d"]) == "b"
    assert selectivity(torch.tensor([0.0, 2.0, 0.0])) == 1.0
    assert selectivity(torch.ones(4)) == pytest.approx(0.25)
    assert selectivity(torch.zeros(3)) == 0.0


def test_ssim_and_psnr_of_identical_and_changed_images():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(ssim_per_image(images, images), torch.ones(3), atol=1e-5, rtol=0)
    assert psnr_per_image(images, images).tolist() == [PSNR_CAP] * 3
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    assert (ssim_per_image(noisy, images) < 0.99).all()
    assert (psnr_per_image(noisy, images) < 30).all()
    assert ssim_per_image(noisy[:, :, :8, :8], images[:, :, :8, :8]).shape == (3,)  # window shrinks to fit


class _TinyFeatures(nn.Module):
    """A stand-in classifier: 8 pooled colour statistics."""

    num_features = 8
    attribute_names = ("a", "b")

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)[:, :8]
        return pooled * self.scale


def test_kid_of_identical_sets_is_about_zero_and_of_different_sets_is_not():
    torch.manual_seed(0)
    extractor = ClassifierFeatures(_TinyFeatures())
    real = torch.rand(256, 3, 8, 8)
    shifted = (real * 0.5 + torch.tensor([0.5, 0.0, 0.2]).reshape(1, 3, 1, 1)).clamp(0, 1)
    same, _ = kid(extractor, real, real.clone(), subset_size=256, subsets=1)
    other, _ = kid(extractor, real, shifted, subset_size=256, subsets=1)
    assert other > 0.01 and abs(same) < 0.01 * other
    # features have norm sqrt(num_features); uint8 images read the same as floats
    features = extractor(real[:4])
    torch.testing.assert_close(features.norm(dim=1), torch.full((4,), 8**0.5))
    as_bytes = extractor((real * 255).round().byte())
    torch.testing.assert_close(as_bytes, extractor((real * 255).round() / 255), atol=1e-5, rtol=0)
    small = kid(extractor, real[:16], shifted[:16], subset_size=8, subsets=20)
    assert small == kid(extractor, real[:16], shifted[:16], subset_size=8, subsets=20)  # subsets from a fixed seed


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num_samples": 1}, "evaluate.num_samples"),
        ({"methods": ["pca", "supervised"]}, "evaluate.methods"),
        ({"distortion_budget": 1.5}, "evaluate.distortion_budget"),
        ({"kid_subset_size": 1}, "evaluate.kid_subset_size"),
        ({"grid_samples": 99}, "evaluate.grid_samples"),
        ({"scales": []}, "evaluate.scales"),
        ({"bisection_stepz": 2}, "evaluate.bisection_stepz"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(override, key):
    params = OmegaConf.merge(load_params(ROOT / "params.yaml"), {"evaluate": override})
    with pytest.raises(ConfigError) as error:
        load_section("evaluate", EvaluateConfig, params)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_conf_equals_the_dataclass_defaults():
    assert load_section("evaluate", EvaluateConfig, load_params(ROOT / "params.yaml")) == EvaluateConfig()


# ---------------------------------------------------------------------------------------------- the editors


def test_batched_guidance_equals_guidance_edit(tiny_model, single_thread):
    torch.manual_seed(1)
    x_t = torch.randn(2, 3, 16, 16)
    v = torch.randn(3, 16, 16)
    v /= v.norm()
    strengths = torch.tensor([0.0, 2.0, -1.0, 2.0])
    rows = torch.tensor([0, 0, 1, 1])
    batched = guidance_rows(tiny_model, x_t[rows], v, strengths, 500, step_size=0.5, iterations=2, batch_size=3)
    for row, (sample, c) in enumerate(zip(rows.tolist(), strengths.tolist(), strict=True)):
        single = guidance_edit(tiny_model, x_t[sample], v, 500, [c], step_size=0.5, iterations=2)[0]
        torch.testing.assert_close(batched[row], single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], x_t[0], atol=0, rtol=0)


@needs_classifier
@pytest.mark.parametrize("space", ["h", "x_T", "x_t"])
def test_a_scale_zero_edit_is_the_baseline(tiny_model, single_thread, space):
    from pipeline.diffusion.hspace import hspace_shape

    sampler = SamplerConfig(steps=3, eta=0.0, batch_size=8)
    samples = held_out(tiny_model, sampler, seed_offset=95_000_000, count=3)
    torch.manual_seed(2)
    shape = hspace_shape(tiny_model.unet, "after", tiny_model.sample_shape) if space == "h" else (3, 16, 16)
    vectors = torch.randn(2, *((3,) if space == "h" else ()), *shape)
    origin = Origin(model_id="tiny", hspace_location="after", sampler_steps=3, eta=0.0)
    extra = {}
    if space == "x_t":
        origin = Origin(model_id="tiny", hspace_location="after", sampler_steps=3, eta=0.0,
                        steps=torch.tensor([1]), timesteps=torch.tensor([333]))  # fmt: skip
        extra = {"step_size": 0.5, "iterations": 2, "boost_step": 2}
    directions = Directions(vectors, "pca_all_steps" if space == "h" else "pullback_global", space,
                            ["d0", "d1"], origin, extra=extra)  # fmt: skip
    classifier = ToyFacesClassifier.load(CLASSIFIER)
    judge = Judge(classifier)
    if space == "x_t":

        def states(step):
            from pipeline.directions.pullback import states_at

            return states_at(tiny_model, samples.x_T, samples.noise, steps=3, eta=0.0, step_indices=[step])[step]

        editor = GuidedEditor(tiny_model, directions, samples, sampler, states, "test")
    else:
        editor = Editor(tiny_model, directions, samples, sampler,
                        decode_images(tiny_model, samples.x_T, samples.noise, sampler))  # fmt: skip
    baseline = Reading.of(judge, editor.baseline)
    images = editor(1, [0.0, 3.0])
    assert images.shape == (2, 3, 3, 16, 16)
    still = measure(judge, baseline, images[0], 0.0)
    torch.testing.assert_close(still.ssim, torch.ones(3), atol=1e-4, rtol=0)
    assert still.psnr.min() > 60 and still.distortion < 1e-4
    assert still.effects.abs().max() < 1e-3 and still.effects.shape == (3, len(judge.names))
    moved = measure(judge, baseline, images[1], 3.0)
    assert moved.distortion > still.distortion
    subset = editor(1, [3.0], torch.tensor([2]))
    torch.testing.assert_close(subset[0, 0], images[1, 2], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory, single_thread):
    """A tiny study: the upstream stages, then evaluate and report, in a temporary folder."""
    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    folder = tmp_path_factory.mktemp("evaluate")
    overrides = tiny_study_overrides(tiny_model_dir, CLASSIFIER)
    with run_study(folder, overrides, (generate, label, hstats, pca, supervised, jacobian, pullback, evaluate, report)):
        yield folder


def test_evaluate_scores_every_method_and_direction(workspace):
    metrics = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert not [path for path in (workspace / ".work").rglob("*") if path.is_file()], "resumable work left behind"
    assert "seconds" not in json.dumps(metrics), "timings belong in the log, not in reproducible metrics"
    cfg = EvaluateConfig()
    assert set(metrics["methods"]) == set(metrics["table"]) == set(cfg.methods)  # (JSON keys are sorted)
    names = list(ToyFacesClassifier.attribute_names)
    expected_counts = {"supervised": 7, "noise_supervised": 7, "supervised_conditional": 1}
    for method, entry in metrics["methods"].items():
        directions = entry["directions"]
        assert len(directions) == expected_counts.get(method, 2), method
        for name, result in directions.items():
            effects = torch.tensor([result["effects"][a] for a in names])
            assert effects.shape == (7,)
            assert result["label"] == names[int(effects.abs().argmax())]
            if effects.abs().sum() > 0:
                assert 1 / 7 - 1e-6 <= result["selectivity"] <= 1.0
            assert 0.0 <= result["scale"] <= cfg.max_scale and result["probes"] <= 2
            assert -1.0 <= result["ssim"] <= 1.0 + 1e-6 and result["psnr"] > 0
            assert result["kid"] is not None
            assert len(result["truth_effects"]) == 13 and 0 < result["truth_selectivity"] <= 1.0
            if method in expected_counts:
                assert result["target"] == name and 0.0 <= result["flipped"] <= 1.0
                assert result["label_correct"] == (result["label"] == name)
        summary = entry["summary"]
        assert summary["directions"] == len(directions) and summary["fid"] is None  # 4 samples < 128 features
        assert summary["unedited_kid"] is not None
    assert set(metrics["table"]["supervised"]) >= {"mean_selectivity", "mean_ssim", "mean_kid", "min_flipped"}
    conditional = metrics["conditional"]["smiling"]
    assert conditional["partners"] == ["light_hair"]
    assert set(conditional["matched"]) >= {"partner_effect_plain", "partner_effect_conditional", "target_kept"}


def test_evaluate_writes_curves_method_table_and_grids(workspace):
    with (workspace / "plots/evaluate_effects.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"method", "direction", "scale", "label", "label_effect", "target_effect", "distortion"} <= set(rows[0])
    supervised_rows = [row for row in rows if row["method"] == "supervised" and row["direction"] == "smiling"]
    scales = [float(row["scale"]) for row in supervised_rows]
    assert scales == sorted(scales) and {-1.0, 0.0, 1.0} <= set(scales)
    assert sum(int(row["matched"]) for row in supervised_rows) == 1
    zero = next(row for row in supervised_rows if float(row["scale"]) == 0.0)
    assert float(zero["distortion"]) == 0.0 and float(zero["target_effect"]) == 0.0
    with (workspace / "plots/evaluate_methods.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == EvaluateConfig().methods
    for method in EvaluateConfig().methods:
        assert (workspace / f"plots/evaluate/{method}.png").is_file()


def test_report_is_written(workspace):
    page = (workspace / "report/index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "pca_per_step" in page


def test_central_difference_cancels_what_both_signs_do_alike():

    linear = torch.tensor([[2.0, -1.0, 0.0], [4.0, -3.0, 0.0]])  # the direction's own effect at +s
    artifact = torch.tensor([[1.0, 1.0, 5.0], [3.0, 0.0, -2.0]])  # what any edit of that size does
    effects = central_difference(linear + artifact, -linear + artifact)
    torch.testing.assert_close(effects, torch.tensor([3.0, -2.0, 0.0]))
