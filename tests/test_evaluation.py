"""The evaluation protocol (every direction judged per side, per sample), its measures, the editors, and the
evaluate and preview stages end to end."""

import csv
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions import Directions, Origin
from pipeline.directions.pullback import guidance_edit, guidance_rows
from pipeline.editing.samples import Editor, GuidedEditor, decode_images, held_out
from pipeline.evaluation.measures import ClassifierFeatures, ssim_per_image
from pipeline.evaluation.protocol import STATUSES, ProtocolConfig, judge_direction, judge_sides, method_grid
from pipeline.evaluation.readout import Reading
from pipeline.io.errors import ConfigError
from pipeline.io.params import load_params, load_section
from pipeline.steps.evaluate import EvaluateConfig
from stages import generate, hstats, jacobian, label, pca, preview, pullback, report, supervised
from tests.helpers import EVALUATE, PREVIEW, run_study, tiny_study_overrides

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models/toyfaces/classifier"
needs_classifier = pytest.mark.skipif(not CLASSIFIER.is_dir(), reason="committed ToyFaces classifier absent")


# ---------------------------------------------------------------------------------------------- the measures


def test_ssim_of_identical_and_changed_images():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(ssim_per_image(images, images), torch.ones(3), atol=1e-5, rtol=0)
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    assert (ssim_per_image(noisy, images) < 0.99).all()
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


def test_classifier_features_have_a_fixed_norm_and_read_bytes_as_floats():
    torch.manual_seed(0)
    extractor = ClassifierFeatures(_TinyFeatures())
    real = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(extractor(real).norm(dim=1), torch.full((4,), 8**0.5))
    as_bytes = extractor((real * 255).round().byte())
    torch.testing.assert_close(as_bytes, extractor((real * 255).round() / 255), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num_samples": 1}, "evaluate.num_samples"),
        ({"untargeted_samples": 999}, "evaluate.untargeted_samples"),
        ({"methods": ["pca", "supervised"]}, "evaluate.methods"),
        ({"scales": []}, "evaluate.scales"),
        ({"scales": [-1.0, 1.0]}, "evaluate.scales"),
        ({"method_scales": {"pullback_global": [0.0]}}, "evaluate.method_scales.pullback_global"),
        ({"max_broken": 1.5}, "evaluate.max_broken"),
        ({"grid_samples": 0}, "evaluate.grid_samples"),
        ({"broken": {"detector": "lpips"}}, "evaluate.broken.detector"),
        ({"broken": {"seed_offset": 95_000_010}}, "evaluate.broken.seed_offset"),
        ({"bisection_steps": 2}, "evaluate.bisection_steps"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(override, key):
    params = OmegaConf.merge(load_params(ROOT / "params.yaml"), {"evaluate": override})
    with pytest.raises(ConfigError) as error:
        load_section("evaluate", EvaluateConfig, params)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_conf_equals_the_dataclass_defaults():
    assert load_section("evaluate", EvaluateConfig, load_params(ROOT / "params.yaml")) == EvaluateConfig()


def test_the_full_profile_judges_at_least_256_seeds():
    from pipeline.io.params import compose, validate

    composed = OmegaConf.create(compose(ROOT / "conf", overrides=["evaluate=full"]))
    full = validate(composed.evaluate, EvaluateConfig, "evaluate")
    assert full.num_samples >= 256 and full.untargeted_samples >= 128
    assert len(full.scales) > len(EvaluateConfig().scales)
    assert full.broken == EvaluateConfig().broken


# ---------------------------------------------------------------------------------------------- the protocol


class _PixelReader:
    """A reader of synthetic images: attribute a is present when channel a's mean exceeds 0.5, and an image
    with a channel-2 pixel above 1.5 is broken (a stand-in for the classifier and the broken check)."""

    names = ("smiling", "hat", "glasses")
    factor_names = ()

    def __call__(self, images: torch.Tensor) -> Reading:
        decided = images.mean(dim=(2, 3)) > 0.5
        return Reading(images, decided, images[:, 2].flatten(1).amax(dim=1) > 1.5)

    def factor_change(self, before: Reading, after: Reading) -> None:
        return None


class _ShiftEditor:
    """Edits synthetic images: scale s raises channel 0 (the target) by 0.6 s; from |s| = 2 on it also raises
    channel 1 (an off-target change), and at |s| = 3 it breaks the image. Records which samples it decodes."""

    def __init__(self, images: torch.Tensor):
        self.baseline = images
        self.asked: list[list[int]] = []

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor) -> torch.Tensor:
        self.asked.append(index.tolist())
        edited = []
        for scale in scales:
            images = self.baseline[index].clone()
            images[:, 0] += 0.6 * scale
            if abs(scale) >= 2:
                images[:, 1] += 0.6
            if abs(scale) >= 3:
                images[:, 2, 0, 0] = 2.0
            edited.append(images)
        return torch.stack(edited)


def _synthetic_samples() -> torch.Tensor:
    images = torch.full((6, 3, 16, 16), 0.2)
    images[3:, 0] = 0.8  # samples 3-5 smile; none has a hat or glasses
    return images


def test_a_targeted_direction_is_judged_per_side_on_its_eligible_samples_only():
    images = _synthetic_samples()
    reader, editor = _PixelReader(), _ShiftEditor(images)
    baseline = reader(images)
    cfg = ProtocolConfig(scales=[1.0, 2.0, 3.0], grid_samples=1, max_extensions=0)
    result = judge_direction(editor, reader, baseline, 0, "smiling", 0, cfg.scales_for("supervised"), cfg)
    # up: samples 0-2 (without a smile), plus the grid's sample 0; down: samples 3-5 and the grid's sample 0
    assert editor.asked == [[0, 1, 2], [0, 3, 4, 5]]
    up, down = result.sides["up"], result.sides["down"]
    # scale 1 flips cleanly; scale 2 also adds a hat; scale 3 breaks every image: the operating scale is 1
    assert up.operating.scale == 1.0 and up.feasible and up.operating.outcome.clean_flip_rate() == 1.0
    entry = up.entry()
    assert entry["scale"] == 1.0 and entry["target"] == "smiling" and entry["towards"] == "up"
    assert entry["clean_flip"]["n"] == 3 and entry["off_target"]["hat"]["rate"] == 0.0
    assert [point["clean_flip"] for point in entry["curve"]] == [1.0, 0.0, 0.0]
    assert [point["broken"] for point in entry["curve"]] == [0.0, 0.0, 1.0]
    assert [point["flip"] for point in entry["curve"]] == [1.0, 1.0, 0.0]  # a broken image's flip does not count
    assert down.entry()["scale"] == -1.0 and down.entry()["clean_flip"]["rate"] == 1.0
    scales, tiles, verdicts = result.grid(baseline, 1)
    assert scales == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0] and tiles.shape == (1, 7, 3, 16, 16)
    # sample 0 has no smile: the "down" edits have nothing to remove (no verdict)
    assert verdicts == [["", "", "", "", "clean", "flip", "broken"]]


def test_an_untargeted_direction_is_labelled_by_its_cleanest_attribute_and_side():
    images = _synthetic_samples()
    reader, editor = _PixelReader(), _ShiftEditor(images)
    baseline = reader(images)
    cfg = ProtocolConfig(scales=[1.0, 2.0], min_eligible=2, max_extensions=0)
    result = judge_direction(editor, reader, baseline, 0, "pc0", None, cfg.scales_for("pca_all_steps"), cfg)
    assert editor.asked == [list(range(6)), list(range(6))]
    assert result.target is None
    assert result.sides["plus"].entry_target() == "smiling up" and result.sides["plus"].operating.scale == 1.0
    assert result.sides["minus"].entry_target() == "smiling down"
    with pytest.raises(ConfigError, match=r"evaluate\.min_eligible=7"):
        judge_direction(editor, reader, baseline, 0, "pc0", None, [1.0], ProtocolConfig(min_eligible=7))


class _ThresholdEditor:
    """Edits synthetic images: at |scale| >= ``flips_at[sample]`` the target (channel 0) crosses, at |scale| >=
    ``spills_at`` channel 1 (an off-target attribute) crosses too, and at |scale| >= ``breaks_at`` the image breaks.
    Records every (scales, rows) it decodes."""

    def __init__(self, images: torch.Tensor, flips_at: torch.Tensor, spills_at: float = 1e9, breaks_at: float = 1e9):
        self.baseline, self.flips_at, self.spills_at, self.breaks_at = images, flips_at, spills_at, breaks_at
        self.asked: list[tuple[list[float], list[int]]] = []

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor) -> torch.Tensor:
        self.asked.append(([abs(s) for s in scales], index.tolist()))
        edited = []
        for scale in scales:
            images = self.baseline[index].clone()
            crossed = abs(scale) >= self.flips_at[index]
            images[crossed, 0] = 1.0 - images[crossed, 0]
            if abs(scale) >= self.spills_at:
                images[:, 1] = 0.9
            if abs(scale) >= self.breaks_at:
                images[:, 2, 0, 0] = 2.0
            edited.append(images)
        return torch.stack(edited)


def _judge_up(editor: _ThresholdEditor, cfg: ProtocolConfig, choose: int):
    baseline = _PixelReader()(editor.baseline)
    result = judge_direction(editor, _PixelReader(), baseline, 0, "smiling", 0, cfg.scales, cfg, choose)
    return result.sides["up"]


def test_the_operating_scale_is_chosen_on_the_choosing_samples_and_reported_on_the_others():
    images = torch.full((12, 3, 8, 8), 0.2)  # nobody smiles: every sample is eligible "up"
    # the 4 choosing samples flip at scale 1; the 8 reported ones only at 2 (at 2 everyone also gains a hat)
    flips_at = torch.tensor([1.0] * 4 + [2.0] * 8)
    cfg = ProtocolConfig(scales=[1.0, 2.0], max_extensions=0, grid_samples=1)
    up = _judge_up(_ThresholdEditor(images, flips_at, spills_at=2.0), cfg, choose=4)
    assert up.operating.scale == 1.0 and up.operating.outcome.clean_flip_rate() == 1.0
    entry = up.entry()
    # reported on the 8 others at scale 1, where none of them flips: the choosing samples' 1.0 is not reported
    assert entry["scale"] == 1.0 and entry["chosen_on"] == 4 and entry["clean_flip"] == {**entry["clean_flip"], "n": 8}
    assert entry["clean_flip"]["rate"] == 0.0 and entry["flip"]["rate"] == 0.0
    # whatever the reported samples do, the choice is the same: it never sees them
    changed = _judge_up(_ThresholdEditor(images, torch.tensor([1.0] * 4 + [0.5] * 8), spills_at=2.0), cfg, 4)
    assert changed.operating.scale == 1.0 and changed.entry()["clean_flip"]["rate"] == 1.0


def test_reported_samples_are_decoded_at_the_operating_scale_only():
    images = torch.full((10, 3, 8, 8), 0.2)
    images[[3, 8], 0] = 0.8  # two smile: not eligible "up"
    editor = _ThresholdEditor(images, torch.full((10,), 2.0))
    _judge_up(editor, ProtocolConfig(scales=[1.0, 2.0], max_extensions=0, grid_samples=1), choose=5)
    up_calls = editor.asked[:2]
    assert up_calls == [([1.0, 2.0], [0, 1, 2, 4]), ([2.0], [5, 6, 7, 9])]


def test_a_curve_whose_best_point_is_past_the_first_scales_is_extended_to_it():
    images = torch.full((6, 3, 8, 8), 0.2)
    # nothing flips at 1 or 2; at 4 every sample flips cleanly, at 8 it also gains a hat, at 16 it breaks
    editor = _ThresholdEditor(images, torch.full((6,), 4.0), spills_at=8.0, breaks_at=16.0)
    cfg = ProtocolConfig(scales=[1.0, 2.0], growth=2.0, max_extensions=3, grid_samples=1)
    up = _judge_up(editor, cfg, choose=3)
    assert [point.scale for point in up.curve] == [1.0, 2.0, 4.0, 8.0]
    assert up.operating.scale == 4.0 and up.status == "inside" and up.entry()["clean_flip"]["rate"] == 1.0
    # with a single extension the best point seen is the end of the curve: marked, not hidden
    capped = _judge_up(_ThresholdEditor(images, torch.full((6,), 4.0), 8.0, 16.0), replace(cfg, max_extensions=1), 3)
    assert [point.scale for point in capped.curve] == [1.0, 2.0, 4.0] and capped.status == "edge"


def test_a_curve_flat_at_its_low_end_is_not_extended_towards_zero():
    images = torch.full((8, 3, 8, 8), 0.2)
    # two of the four choosing samples sit on the boundary and flip at any scale; scale 2 also adds a hat
    editor = _ThresholdEditor(images, torch.tensor([0.0, 0.0, 1e9, 1e9] * 2), spills_at=2.0)
    up = _judge_up(editor, ProtocolConfig(scales=[0.5, 1.0, 2.0], max_extensions=3, grid_samples=1), choose=4)
    assert [point.scale for point in up.curve] == [0.5, 1.0, 2.0] and up.operating.scale == 0.5
    assert up.status == "inside"
    # a curve that falls from its low end is followed down
    falling = _ThresholdEditor(images, torch.tensor([0.2, 0.2, 0.2, 1e9] * 2), spills_at=0.5)
    down = _judge_up(falling, ProtocolConfig(scales=[0.25, 0.5], max_extensions=2, grid_samples=1), choose=4)
    assert [point.scale for point in down.curve] == [0.125, 0.25, 0.5] and down.operating.scale == 0.25
    assert down.status == "inside"


def test_a_side_that_no_scale_flips_says_so():
    images = torch.full((6, 3, 8, 8), 0.2)
    editor = _ThresholdEditor(images, torch.full((6,), 1e9), breaks_at=4.0)  # never flips, breaks from 4 on
    up = _judge_up(editor, ProtocolConfig(scales=[0.5, 1.0, 2.0], max_extensions=3, grid_samples=1), choose=3)
    # the curve grows while its largest scale is within the broken budget, and stops at the first broken one
    assert [point.scale for point in up.curve] == [0.5, 1.0, 2.0, 4.0]
    assert up.status == "no_flip" and up.entry()["status"] == "no_flip" and up.feasible
    breaks = _ThresholdEditor(images, torch.full((6,), 1.0), breaks_at=0.1)
    assert _judge_up(breaks, ProtocolConfig(scales=[1.0, 2.0], max_extensions=1), choose=3).status == "infeasible"


def test_judging_again_from_the_edits_finds_the_same_and_refuses_edits_without_the_reported_decodes():
    images = torch.full((8, 3, 8, 8), 0.2)
    cfg = ProtocolConfig(scales=[1.0, 2.0], max_extensions=0, grid_samples=1)
    editor = _ThresholdEditor(images, torch.tensor([1.0] * 4 + [2.0] * 4), spills_at=2.0)
    up = _judge_up(editor, cfg, choose=4)
    names = list(_PixelReader.names)
    assert judge_sides({"up": up.edits}, up.unedited, 0, cfg, names)["up"].entry() == up.entry()
    decoded = up.edits.decoded.clone()
    decoded[0, 4:] = False  # the reported samples' decodes at the operating scale 1 missing
    with pytest.raises(ConfigError, match="4 reported samples were not decoded at the operating scale 1"):
        judge_sides({"up": replace(up.edits, decoded=decoded)}, up.unedited, 0, cfg, names)


def test_method_grid_rows_follow_the_results_order_with_one_label_per_row():
    images = _synthetic_samples()
    reader = _PixelReader()
    baseline = reader(images)
    cfg = ProtocolConfig(scales=[1.0], grid_samples=2, max_extensions=0)
    results = {
        name: judge_direction(_ShiftEditor(images), reader, baseline, 0, name, 0, [1.0], cfg)
        for name in ("smiling", "also_smiling")
    }
    grid = method_grid("supervised", results, baseline, cfg.grid_samples)
    assert grid.picture.shape[0] == 3 and grid.picture.shape[1] > 4 * images.shape[-2]
    names = ["smiling", "smiling", "also_smiling", "also_smiling"]
    assert grid.rows == [f"{name} · sample {i % 2 + 1}" for i, name in enumerate(names)]
    assert grid.columns == ["-1", "0", "+1"]
    assert grid.caption.index("smiling: up smiling up") < grid.caption.index("also_smiling: up smiling up")


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
    if space == "x_t":

        def states(step):
            from pipeline.directions.pullback import states_at

            return states_at(tiny_model, samples.x_T, samples.noise, steps=3, eta=0.0, step_indices=[step])[step]

        editor = GuidedEditor(tiny_model, directions, samples, sampler, states, "test")
    else:
        editor = Editor(tiny_model, directions, samples, sampler,
                        decode_images(tiny_model, samples.x_T, samples.noise, sampler))  # fmt: skip
    images = editor(1, [0.0, 3.0])
    assert images.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(images[0], editor.baseline, atol=1e-4, rtol=0)
    assert (ssim_per_image(images[1], editor.baseline) < ssim_per_image(images[0], editor.baseline)).all()
    subset = editor(1, [3.0], torch.tensor([2]))
    torch.testing.assert_close(subset[0, 0], images[1, 2], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- the stages


SAME_EDITS = {
    "preview.seed_offset": 95_000_000,
    "preview.grid_samples": 4,
    "preview.scales": "[-2.0,-1.0,0.0,1.0,2.0]",
    "preview.max_directions": 2,
}
"""Preview settings that make its edits those of the tiny study's evaluate (same seeds, scales, directions)."""


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory, single_thread):
    """A tiny study: the upstream stages, then preview (on evaluate's seeds and scales), evaluate and report."""
    if not CLASSIFIER.is_dir():
        pytest.skip("committed ToyFaces classifier absent")
    folder = tmp_path_factory.mktemp("evaluate")
    overrides = tiny_study_overrides(tiny_model_dir, CLASSIFIER, SAME_EDITS)
    stages = (generate, label, hstats, pca, supervised, PREVIEW, jacobian, pullback, EVALUATE, report)
    with run_study(folder, overrides, stages):
        yield folder


def _details(workspace: Path) -> dict:
    """{"methods": method -> its directions' entries} from every method's plots/evaluate/<method>/judge.json."""
    return {
        "methods": {
            method: json.loads((workspace / f"plots/evaluate/{method}/judge.json").read_text())["directions"]
            for method in EvaluateConfig().methods
        }
    }


def _count_numbers(value) -> int:
    if isinstance(value, dict):
        return sum(_count_numbers(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_numbers(item) for item in value)
    return int(isinstance(value, int | float) and not isinstance(value, bool))


def test_evaluate_writes_a_short_summary_and_every_side_in_the_details(workspace):
    metrics = json.loads((workspace / "metrics/evaluate.json").read_text())
    details = _details(workspace)
    assert not [path for path in (workspace / ".work").rglob("*") if path.is_file()], "resumable work left behind"
    assert "seconds" not in json.dumps(metrics), "timings belong in the log, not in reproducible metrics"
    cfg = EvaluateConfig()
    assert set(metrics["methods"]) == set(details["methods"]) == set(cfg.methods)
    full = json.loads((workspace / "plots/evaluate_summary.json").read_text())
    assert _count_numbers(metrics) == 2 + 3 * len(cfg.methods), "the headline; the full summary is not a metric"
    assert metrics["num_samples"] == 4 and 0.0 <= metrics["unedited_broken"] <= 1.0
    for method, headline in metrics["methods"].items():
        assert headline == {key: full["methods"][method][key] for key in headline}
        assert {"mean_clean_flip_stop", "infeasible"} <= set(full["methods"][method])
    expected_counts = {"supervised": 7, "noise_supervised": 7, "supervised_conditional": 1}
    names = ["smiling", "eyeglasses", "light_hair", "eyes_open", "hat", "pale_skin", "warm_background"]
    for method, judged in details["methods"].items():
        assert len(judged) == expected_counts.get(method, 2), method
        targeted = method in expected_counts
        for entry in judged:
            name = entry["name"]
            assert set(entry["sides"]) == ({"up", "down"} if targeted else {"plus", "minus"})
            for side, values in entry["sides"].items():
                if targeted:
                    assert values["target"] == name and values["towards"] == side
                curve = [point["scale"] for point in values["curve"]]
                assert values["target"] in names and abs(values["scale"]) in curve and {1.0, 2.0} <= set(curve)
                assert (values["scale"] > 0) == (side in ("up", "plus")) and values["status"] in STATUSES
                assert len(curve) <= 3 and len(values["off_target"]) == 6  # one extension at most
                assert values["attributes_changed"]["n"] <= values["broken"]["n"] <= 4
                for rate in ("flip", "clean_flip", "broken", "any_off_target"):
                    r = values[rate]
                    assert r["rate"] is None or r["low"] <= r["rate"] <= r["high"]
                if values["clean_flip"]["rate"] is not None:
                    assert values["clean_flip"]["rate"] <= values["flip"]["rate"]
        summary = metrics["methods"][method]
        assert 0.0 <= summary["min_clean_flip"] <= summary["mean_clean_flip"] <= 1.0
    assert set(full["supervised"]["hat"]) == {
        "flip_up", "flip_down", "clean_flip_up", "clean_flip_down", "broken_up", "broken_down",
    }  # fmt: skip
    conditional = full["conditional"]["smiling"]
    assert set(conditional) == {"up", "down"}
    assert {"partner_flip_plain", "partner_flip_conditional", "flip_plain", "new_off_target"} <= set(conditional["up"])
    for method in cfg.methods:
        settings = json.loads((workspace / f"plots/evaluate/{method}/judge.json").read_text())["settings"]
        assert settings["broken_check"]["detector"] == "rerender" and settings["num_samples"] == 4
        assert settings["choose_samples"] == 4


def test_evaluate_writes_curves_method_table_and_grids(workspace):
    with (workspace / "plots/evaluate_curves.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = {"method", "direction", "side", "target", "scale", "flip", "clean_flip", "broken", "operating"}
    assert columns <= set(rows[0])
    smiling = [row for row in rows if row["method"] == "supervised" and row["direction"] == "smiling"]
    assert {-2.0, -1.0, 1.0, 2.0} <= {float(row["scale"]) for row in smiling}
    assert sum(int(row["operating"]) for row in smiling) == 2  # one per side
    with (workspace / "plots/evaluate_methods.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == EvaluateConfig().methods
    assert {"mean_clean_flip", "min_clean_flip", "mean_broken", "infeasible"} <= set(table[0])
    for method in EvaluateConfig().methods:
        assert (workspace / f"plots/evaluate/{method}/grid.png").is_file()


def test_the_records_reproduce_every_judged_entry(workspace):
    """The summary stage judges again from the per-sample records: it must find what the method stage found."""
    from pipeline.evaluation.records import load_records
    from pipeline.io.artefacts import records_path

    cfg = load_section("evaluate", EvaluateConfig, load_params(workspace / "params.yaml"))
    for method in cfg.methods:
        judged = load_records(workspace / records_path(method)).judge(cfg)
        entries = json.loads((workspace / f"plots/evaluate/{method}/judge.json").read_text())["directions"]
        assert json.loads(json.dumps([result.entry() for result in judged.values()])) == entries, method


def test_preview_stage_takes_one_method_of_preview_methods(tmp_path, monkeypatch):
    """``python -m stages.preview METHOD``: no method or two is a one-line usage error, a method outside
    ``preview.methods`` a one-line error naming the key (before any model loads)."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    for argv in ([], ["supervised", "pca_per_step"]):
        with pytest.raises(ConfigError, match=r"usage: python -m stages\.preview METHOD") as error:
            preview.main(argv)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"not in preview\.methods") as error:
        preview.main(["jacobian"])
    assert "\n" not in str(error.value)


def test_preview_and_evaluate_judge_the_same_edit_alike(workspace):
    """The same seeds, direction and scales give the same rates in both stages: the preview's samples are the
    evaluation's choosing samples, so their curves agree wherever both edited."""
    for method in ("supervised", "supervised_conditional"):
        previewed = json.loads((workspace / f"plots/preview/{method}/judge.json").read_text())
        evaluated = json.loads((workspace / f"plots/evaluate/{method}/judge.json").read_text())
        assert previewed["broken_check"] == evaluated["settings"]["broken_check"]
        for shown, judged in zip(previewed["directions"], evaluated["directions"], strict=True):
            for side, values in shown["sides"].items():
                curve = {point["scale"]: point for point in judged["sides"][side]["curve"]}
                assert values["curve"] and all(point == curve[point["scale"]] for point in values["curve"])
    assert not (workspace / "metrics/preview.json").exists()


def test_report_puts_each_method_table_before_its_grid_in_the_same_order(workspace):
    page = (workspace / "report/index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for method, judged in _details(workspace)["methods"].items():
        table = page.index(f'id="table-{method}"')
        grid = page.index(f'alt="{method} edit grid"')
        assert table < grid
        body = page[table:grid]
        positions = [body.index(f"<td>{entry['name']}</td>") for entry in judged]
        assert positions == sorted(positions), f"{method}: table rows not in the file's order"
        # the grid's row labels, as the evaluate stage drew them, list the directions in the table's order
        caption = page[page.index(f'id="grid-{method}"') :].split("</figcaption>", 1)[0]
        rows = caption.split("Rows, top to bottom: ", 1)[1].split(". Columns", 1)[0].split(", ")
        drawn = list(dict.fromkeys(row.split(" · ")[0] for row in rows))
        assert drawn == [entry["name"] for entry in judged], method
        assert "Columns, left to right: -2, -1, +1, +2" not in caption and ", 0, " in caption
    assert "Supervised directions, per attribute and side" in page and 'id="conditional"' in page
