"""The study end to end: every DVC stage's entry point, run in a temporary workspace on a tiny model."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.data.labels import read_labels
from pipeline.directions import load_directions
from stages import generate, hstats, jacobian, label, pca, pullback, supervised
from tests.helpers import CLASSIFIER, PREVIEW, run_study, tiny_study_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory, single_thread):
    """A folder with a params.yaml composed from the real conf/ and shrunk to the tiny study (with a preview,
    and pullback bases of 3 vectors at two analysis times)."""
    folder = tmp_path_factory.mktemp("study")
    changes = {
        "sampler.batch_size": 8,
        "generate.shard_size": 5,
        "preview.grid_samples": 3,
        "preview.max_directions": 2,
        "preview.scales": "[-1.0,0.0,1.0]",
        "directions.pullback.basis_size": 3,
        "directions.pullback.analysis_t": "[1.0,0.2]",
        "directions.pullback.curvedness_points": 3,
        "directions.pullback.scales": "[-1.0,0.0,1.0]",
    }
    overrides = tiny_study_overrides(tiny_model_dir, CLASSIFIER, changes)
    with run_study(folder, overrides, (generate, label, hstats, pca, supervised, PREVIEW, jacobian, pullback)):
        yield folder


def test_every_stage_writes_its_outputs(workspace):
    seeds, names, scores = read_labels(workspace / "data/labels.csv")
    assert seeds.tolist() == list(range(12)) and scores.shape == (12, len(names))
    assert (workspace / "data/samples/index.json").is_file()
    assert (workspace / "data/hstats.safetensors").is_file()
    for method in ("pca_per_step", "pca_all_steps", "supervised", "supervised_conditional", "noise_supervised"):
        assert (workspace / f"plots/preview/{method}/grid.png").is_file()
    assert (workspace / "plots/pca_spectrum.csv").read_text().startswith("component,all_steps,per_step_mean")


def test_directions_files_follow_the_one_format(workspace):
    per_step = load_directions(workspace / "directions/pca_per_step.safetensors")
    assert per_step.directions.shape[:2] == (3, 4) and per_step.scales.shape == (3, 4)
    unit_norms = per_step.directions.flatten(2).norm(dim=-1)
    torch.testing.assert_close(unit_norms, torch.ones_like(unit_norms), rtol=0, atol=1e-4)
    sup = load_directions(workspace / "directions/supervised.safetensors")
    assert sup.method == "supervised" and sup.space == "h" and sup.num_directions == 7
    conditional = load_directions(workspace / "directions/supervised_conditional.safetensors")
    assert conditional.names == ["smiling"]
    partner = sup.direction("light_hair").flatten()
    assert abs(conditional.direction("smiling").flatten() @ partner) < 1e-4 * partner.norm() ** 2
    noise = load_directions(workspace / "directions/noise_supervised.safetensors")
    assert noise.space == "x_T" and noise.directions.shape == (7, 3, 16, 16)


def test_preview_judges_every_supervised_attribute_on_both_sides(workspace):
    details = json.loads((workspace / "plots/preview/supervised/judge.json").read_text())
    names = load_directions(workspace / "directions/supervised.safetensors").names
    assert [entry["name"] for entry in details["directions"]] == names
    for entry in details["directions"]:
        assert entry["target"] == entry["name"] and set(entry["sides"]) == {"up", "down"}
        for side in entry["sides"].values():
            assert abs(side["scale"]) == 1.0 and side["flip"]["n"] <= 3
    previewed = {path.name for path in (workspace / "plots/preview").iterdir() if (path / "judge.json").is_file()}
    assert previewed == {"pca_per_step", "pca_all_steps", "supervised", "supervised_conditional", "noise_supervised"}
    assert details["broken_check"]["calibration_samples"] == 8


@pytest.mark.parametrize("injection", ["symmetric", "asyrp"])
def test_batched_edits_equal_single_decodes(tiny_model, single_thread, injection):
    from pipeline.diffusion.hspace import hspace_shape
    from pipeline.diffusion.sampling import SamplerConfig, decode, to_image_range
    from pipeline.directions import Directions, Origin
    from pipeline.editing.samples import edit, held_out

    sampler = SamplerConfig(steps=3, eta=1.0, batch_size=4, injection=injection)
    h_shape = hspace_shape(tiny_model.unet, "after", tiny_model.sample_shape)
    torch.manual_seed(0)
    directions = Directions(
        directions=torch.randn(1, 3, *h_shape),
        method="supervised",
        space="h",
        names=["smiling"],
        origin=Origin(model_id="tiny", hspace_location="after", sampler_steps=3, eta=1.0),
    )
    samples = held_out(tiny_model, sampler, seed_offset=5, count=2)
    edits = edit(tiny_model, directions, 0, [0.0, 0.5], samples, sampler)
    assert edits.shape == (2, 2, 3, 16, 16)
    settings = sampler.decode_settings("after")
    plain = decode(tiny_model, samples.x_T, samples.noise, settings, capture_steps=None)
    torch.testing.assert_close(edits[0], to_image_range(plain.x_0), rtol=0, atol=1e-6)
    delta_h = 0.5 * directions.direction(0)
    edited = decode(tiny_model, samples.x_T, samples.noise, settings, capture_steps=None, delta_h=delta_h)
    torch.testing.assert_close(edits[1], to_image_range(edited.x_0), rtol=0, atol=1e-5)
    assert not torch.allclose(edits[0], edits[1])
    other_injection = "symmetric" if injection == "asyrp" else "asyrp"
    other_settings = replace(settings, injection=other_injection)
    other = decode(tiny_model, samples.x_T, samples.noise, other_settings, capture_steps=None, delta_h=delta_h)
    assert not torch.allclose(edits[1], to_image_range(other.x_0), atol=1e-4)


def test_jacobian_stage_writes_directions_spectrum_and_locality(workspace):
    directions = load_directions(workspace / "directions/jacobian.safetensors")
    assert directions.method == "jacobian" and directions.names == ["seed70000000/k0", "seed70000000/k1"]
    assert directions.directions.shape == (2, 2, 32, 8, 8) and directions.origin.steps.tolist() == [0, 2]
    metrics = json.loads((workspace / "metrics/jacobian.json").read_text())
    assert metrics["converged"] and metrics["products"] > 0
    assert metrics["mask_locality"]["mean_ratio"] > 0
    rows = (workspace / "plots/jacobian_spectrum.csv").read_text().splitlines()
    assert rows[0] == "step,timestep,sigma_0,sigma_1" and len(rows) == 3
    assert (workspace / "plots/jacobian_preview.png").is_file()


def test_pullback_stage_writes_bases_global_directions_and_analyses(workspace):
    local = load_directions(workspace / "directions/pullback.safetensors")
    assert local.space == "x_t" and local.directions.shape == (6, 3, 16, 16)
    rows = local.directions[:3].flatten(1)
    torch.testing.assert_close(rows @ rows.T, torch.eye(3), atol=1e-5, rtol=0)
    glob = load_directions(workspace / "directions/pullback_global.safetensors")
    assert glob.method == "pullback_global" and glob.names == ["global/v0", "global/v1", "global/v2"]
    details = json.loads((workspace / "plots/pullback_details.json").read_text())
    assert set(details["curvedness"]) == {"arc_length", "chord_length", "curvedness", "tangent_turning"}
    assert 0.0 <= details["curvedness"]["curvedness"] < 1.0
    assert len(details["mean_frequency"]) == 3  # analysis t 1.0 and 0.2, plus edit_t 0.6
    assert all(0.0 <= value <= 1.0 + 1e-6 for value in details["transport_alignment"])
    metrics = json.loads((workspace / "metrics/pullback.json").read_text())  # the headline of the details
    assert metrics["curvedness"] == details["curvedness"]["curvedness"] and metrics["edit_step"] == details["edit_step"]
    assert metrics["mean_transport_alignment"] == pytest.approx(sum(details["transport_alignment"]) / 3)
    for name in ("pullback_spectrum", "pullback_psd", "pullback_tangent_distance"):
        assert (workspace / f"plots/{name}.csv").is_file()
    assert (workspace / "plots/pullback_preview.png").is_file()


def test_supervised_groups_pick_the_sides_of_the_mean_difference(workspace):
    from pipeline.data.hstats import load_hstats
    from pipeline.data.store import open_store
    from pipeline.io.errors import ConfigError
    from pipeline.steps.supervised import SupervisedConfig
    from pipeline.steps.supervised import run as supervised_methods

    store, stats = open_store(workspace / "data/samples"), load_hstats(workspace / "data/hstats.safetensors")
    _, names, _ = read_labels(workspace / "data/labels.csv")
    extremes_cfg = SupervisedConfig(groups="extremes", estimator="mean_difference", significance=None, window=None)
    extremes = supervised_methods(store, stats, names, extremes_cfg)["supervised"]
    for name in names:
        expected = stats.group_means["h"][f"{name}/top"] - stats.group_means["h"][f"{name}/bottom"]
        torch.testing.assert_close(extremes.direction(name).double(), expected.double(), rtol=1e-5, atol=1e-6)
    assert extremes.extra["groups"] == "extremes" and extremes.extra["group_sizes"][names[0]] == [3, 3]

    with pytest.raises(ConfigError, match=r"^directions.supervised.groups 'labels'.*hstats.label_conditioned"):
        supervised_methods(store, stats, names, SupervisedConfig(estimator="mean_difference", significance=None))
    with pytest.raises(ConfigError, match=r"directions\.supervised\.groups"):
        SupervisedConfig(groups="top")
    unknown = SupervisedConfig(
        groups="extremes", estimator="mean_difference", significance=None, attribute_windows={"nose": None}
    )
    with pytest.raises(ConfigError, match=r"^directions\.supervised\.attribute_windows: unknown attribute 'nose'"):
        supervised_methods(store, stats, names, unknown)
    with pytest.raises(ConfigError, match=r"^params: directions\.supervised\.groups='extremes': extremes serve"):
        SupervisedConfig(groups="extremes", estimator="joint_regression")


def test_top_k_larger_than_half_the_samples_is_one_line_naming_the_key(workspace):
    from pipeline.data.store import open_store
    from pipeline.io.errors import ConfigError
    from pipeline.steps.hstats import HStatsConfig
    from pipeline.steps.hstats import run as compute_stats

    store = open_store(workspace / "data/samples")
    _, names, scores = read_labels(workspace / "data/labels.csv")
    with pytest.raises(ConfigError, match=r"^hstats\.top_k=7: .* need hstats\.top_k <= 6 or more generate") as error:
        compute_stats(store, names, scores, HStatsConfig(top_k=7, label_conditioned=False), progress=False)
    assert "\n" not in str(error.value)


def balanced_scores(count: int, attributes: int, seed: int = 0) -> torch.Tensor:
    """[count, attributes] 0/1 scores with at least 2 samples per side of every attribute and labels that are not
    collinear (so every estimator is defined)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        labels = (torch.rand(count, attributes, generator=generator) < 0.5).double()
        design = torch.cat([torch.ones(count, 1, dtype=torch.float64), labels], dim=1)
        sides = torch.stack([labels.sum(0), count - labels.sum(0)])
        if int(torch.linalg.matrix_rank(design)) == attributes + 1 and bool((sides >= 2).all()):
            return labels.float()


def test_supervised_study_judges_every_arm_and_the_few_samples_curve(workspace, tmp_path):
    import csv
    import shutil

    from omegaconf import OmegaConf

    from pipeline.data.labels import write_labels
    from stages import supervised_study

    folder = tmp_path / "study"
    shutil.copytree(workspace, folder, ignore=shutil.ignore_patterns(".work"))
    params = OmegaConf.load(folder / "params.yaml")
    params.hstats.label_conditioned = True
    params.directions.supervised.groups = "labels"
    params.directions.supervised.estimator = "joint_regression"
    params.directions.supervised.window = [0.5, 1.0]
    params.directions.supervised.attribute_windows = {"smiling": None, "hat": [0.75, 1.0]}
    params.supervised_study = {
        "seed_offset": 500, "num_samples": 3, "scales": [1.0], "samples_per_side": [2], "draws": 1, "max_broken": 0.5,
        "few_samples_variant": "plain",  # 2 per side and 7 attributes: a mean difference, not a regression
        "variants": [
            {"name": "plain", "estimator": "mean_difference"},
            {"name": "joint", "estimator": "joint_regression", "significance": 1.0},
            {"name": "late", "estimator": "projection", "window": [0.5, 1.0], "injection": "symmetric",
             "shared_steps": True},
        ],
    }  # fmt: skip
    OmegaConf.save(params, folder / "params.yaml")
    seeds, names, _ = read_labels(folder / "data/labels.csv")
    write_labels(folder / "data/labels.csv", seeds, names, balanced_scores(len(seeds), len(names)))
    with run_study(folder, [], ()):
        (folder / "params.yaml").write_text(OmegaConf.to_yaml(params))
        hstats.main()
        supervised.main()
        supervised_study.main()
    made = load_directions(folder / "directions/supervised.safetensors")
    assert made.extra["estimator"] == "joint_regression"
    edited_steps = {name: made.direction(name).flatten(1).norm(dim=1).nonzero().flatten().tolist() for name in names}
    assert edited_steps["smiling"] == [0, 1, 2, 3] and edited_steps["hat"] == [3]  # of a 4-step grid
    assert all(edited_steps[name] == [2, 3] for name in names if name not in ("smiling", "hat"))
    with (folder / "plots/supervised_study/variants.csv").open() as handle:
        variants = list(csv.DictReader(handle))
    assert [row["variant"] for row in variants] == ["plain", "joint", "late"]
    assert [row["estimator"] for row in variants] == ["mean_difference", "joint_regression", "projection"]
    assert [row["significance"] for row in variants] == ["", "1.0", ""]
    assert [row["shared_steps"] for row in variants] == ["False", "False", "True"]
    assert [row["window"] for row in variants] == ["all", "all", "0.5-1"]
    assert [row["injection"] for row in variants] == ["asyrp", "asyrp", "symmetric"]
    for row in variants:
        assert 0 <= float(row["min_clean_flip"]) <= float(row["mean_clean_flip"]) <= 1
        assert row["worst_side"].split()[0] in names and row["worst_side"].split()[1] in ("up", "down")
    with (folder / "plots/supervised_study/samples.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert [row["samples_per_side"] for row in curve] == ["2", "all"]
    assert -1 <= float(curve[0]["mean_cosine_to_all"]) <= 1 and float(curve[1]["mean_cosine_to_all"]) == 1
    details = json.loads((folder / "plots/supervised_study/judge.json").read_text())
    assert set(details["variants"]) == {"plain", "joint", "late"} and details["few_samples_variant"] == "plain"
    for entries in details["variants"].values():
        assert [entry["name"] for entry in entries] == names
        for entry in entries:
            assert set(entry["sides"]) == {"up", "down"} and "stop_at_flip" in entry["sides"]["up"]
