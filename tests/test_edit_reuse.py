"""h edits that reuse the unedited steps (``reuse_unedited_steps`` of :func:`pipeline.editing.samples.edit` and
:class:`~pipeline.editing.samples.Editor`): a decode from the first edited step, started at the sample's own
unedited x there, equals the full decode from x_T, with fewer UNet calls."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.diffusion.hspace import hspace_shape
from pipeline.diffusion.models import DiffusionModel, load_model
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid
from pipeline.directions import Directions, Origin, save_directions
from pipeline.editing.samples import Editor, HeldOut, decode_images, edit, first_edited_step, held_out
from pipeline.io.params import load_section

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]

STEPS = 6
SCALES = [-2.0, 0.0, 1.5]
SEED_OFFSET = 95_000_000


def _directions(model: DiffusionModel, window: range) -> Directions:
    """Two random h directions on the grid steps of ``window`` (zero elsewhere, as a supervised file's later
    half), 0.3 per entry."""
    shape = hspace_shape(model.unet, "after", model.sample_shape)
    steps = torch.tensor(list(window), dtype=torch.int64)
    vectors = torch.randn((2, len(steps), *shape), generator=torch.Generator().manual_seed(3)) * 0.3
    timesteps = ddim_grid(model.scheduler, STEPS).timesteps[steps]
    origin = Origin(model.model_id, "after", sampler_steps=STEPS, eta=0.0, timesteps=timesteps, steps=steps)
    return Directions(vectors, "supervised", "h", ["a", "b"], origin)


def _samples(model: DiffusionModel, sampler: SamplerConfig, count: int = 3) -> HeldOut:
    return held_out(model, sampler, SEED_OFFSET, count)


@pytest.fixture
def unet_rows(tiny_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The batch size of every UNet call of ``tiny_model`` during the test, in call order."""
    rows: list[int] = []
    eps = tiny_model.eps

    def counted(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows.append(len(x))
        return eps(x, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "eps", counted)
    yield rows


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("injection", ["asyrp", "symmetric"])
def test_a_windowed_edit_from_its_first_edited_step_equals_the_full_decode(
    tiny_model: DiffusionModel, injection: str, eta: float
) -> None:
    sampler = SamplerConfig(steps=STEPS, eta=eta, batch_size=8, injection=injection)
    directions = _directions(tiny_model, range(STEPS // 2, STEPS))
    samples = _samples(tiny_model, sampler)
    assert first_edited_step(directions.delta(0, 1.0)) == STEPS // 2
    full = edit(tiny_model, directions, 0, SCALES, samples, sampler, reuse_unedited_steps=False)
    reused = edit(tiny_model, directions, 0, SCALES, samples, sampler)
    assert reused.shape == full.shape == (len(SCALES), 3, 3, 16, 16)
    assert (full[0] - full[1]).abs().amax() > 1e-2  # the edit changes the images
    assert (reused - full).abs().amax() < 1e-5


def test_an_index_subset_gives_the_full_set_rows(tiny_model: DiffusionModel) -> None:
    sampler = SamplerConfig(steps=STEPS, eta=0.5, batch_size=8)
    samples = _samples(tiny_model, sampler, count=4)
    directions = _directions(tiny_model, range(2, STEPS))
    editor = Editor(tiny_model, directions, samples, sampler, torch.empty(0))
    whole = editor(1, SCALES)
    index = torch.tensor([3, 1])
    part = editor(1, SCALES, index)
    assert part.shape == (len(SCALES), 2, 3, 16, 16)
    assert (part - whole[:, index]).abs().amax() < 1e-5
    reference = Editor(tiny_model, directions, samples, sampler, torch.empty(0), reuse_unedited_steps=False)
    assert (part - reference(1, SCALES, index)).abs().amax() < 1e-5


def test_a_direction_edited_from_the_first_step_decodes_from_x_T(
    tiny_model: DiffusionModel, unet_rows: list[int]
) -> None:
    sampler = SamplerConfig(steps=STEPS, batch_size=16)
    samples = _samples(tiny_model, sampler)
    directions = _directions(tiny_model, range(STEPS))
    reused = edit(tiny_model, directions, 0, SCALES, samples, sampler)
    reused_rows = list(unet_rows)
    full = edit(tiny_model, directions, 0, SCALES, samples, sampler, reuse_unedited_steps=False)
    assert reused_rows == unet_rows[len(reused_rows) :]  # the same UNet calls: no unedited steps to reuse
    assert (reused - full).abs().amax() < 1e-6


def test_a_direction_zero_at_every_step_is_the_unedited_decode(tiny_model: DiffusionModel) -> None:
    sampler = SamplerConfig(steps=STEPS, eta=0.5, batch_size=8)
    samples = _samples(tiny_model, sampler)
    directions = _directions(tiny_model, range(STEPS))
    directions.directions[1] = 0.0
    images = edit(tiny_model, directions, 1, SCALES, samples, sampler)
    baseline = decode_images(tiny_model, samples.x_T, samples.noise, sampler)
    assert images.shape == (len(SCALES), 3, 3, 16, 16)
    assert (images - baseline).abs().amax() < 1e-5


def test_the_editor_runs_the_unedited_steps_once_for_all_its_edits(
    tiny_model: DiffusionModel, unet_rows: list[int]
) -> None:
    """With asyrp a full decode runs 2 T UNet passes of S M rows; the editor runs the f unedited steps once on
    the M samples, then 2 (T - f) passes per edit: about half the rows for a half window."""
    sampler = SamplerConfig(steps=STEPS, batch_size=64, injection="asyrp")
    samples = _samples(tiny_model, sampler)
    first = STEPS // 2
    directions = _directions(tiny_model, range(first, STEPS))
    edits = [(0, None), (1, None), (0, torch.tensor([2, 0]))]
    rows = {}
    for reuse in (False, True):
        unet_rows.clear()
        editor = Editor(tiny_model, directions, samples, sampler, torch.empty(0), reuse_unedited_steps=reuse)
        for k, index in edits:
            editor(k, SCALES, index)
        rows[reuse] = sum(unet_rows)
    edited_rows = sum(len(SCALES) * (3 if index is None else len(index)) for _, index in edits)
    assert rows[False] == 2 * STEPS * edited_rows
    assert rows[True] == first * 3 + 2 * (STEPS - first) * edited_rows
    assert rows[True] < 0.55 * rows[False]


def test_the_benchmark_compares_both_editors(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m benchmarks.evaluate`` on the tiny model, at the params' sampler grid (a smoke test: its
    timings are not checked)."""
    from benchmarks.evaluate import main

    monkeypatch.chdir(ROOT)  # params.yaml
    steps = load_section("sampler", SamplerConfig).steps
    model = load_model(str(tiny_model_dir), device="cpu")
    shape = hspace_shape(model.unet, "after", model.sample_shape)
    window = torch.arange(steps // 2, steps)
    origin = Origin(model.model_id, "after", sampler_steps=steps, eta=0.0, steps=window,
                    timesteps=ddim_grid(model.scheduler, steps).timesteps[window])  # fmt: skip
    vectors = torch.randn((1, len(window), *shape), generator=torch.Generator().manual_seed(4)) * 0.3
    save_directions(tmp_path / "d.safetensors", Directions(vectors, "supervised", "h", ["a"], origin))
    report = main([
        "--model", str(tiny_model_dir), "--directions", str(tmp_path / "d.safetensors"), "--samples", "2",
        "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(tmp_path / "report.json"),
    ])  # fmt: skip
    assert json.loads((tmp_path / "report.json").read_text())["results"] == report["results"]
    assert report["results"]["first_edited_steps"] == [steps // 2]
    assert report["results"]["edited_images"] == 2 * len(report["config"]["scales"])
    assert report["results"]["max_abs_pixel_difference"] < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a clone")
def test_evaluate_benchmark_times_a_revisions_code_beside_this_one(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """``--baseline-rev HEAD`` runs the committed code's editor in a fresh process on the same edits: its images
    equal this code's (HEAD is this code, up to what the working tree changed)."""
    from benchmarks.evaluate import main

    monkeypatch.chdir(ROOT)
    steps = load_section("sampler", SamplerConfig).steps
    model = load_model(str(tiny_model_dir), device="cpu")
    shape = hspace_shape(model.unet, "after", model.sample_shape)
    origin = Origin(model.model_id, "after", sampler_steps=steps, eta=0.0)
    vectors = torch.randn((1, steps, *shape), generator=torch.Generator().manual_seed(5)) * 0.3
    save_directions(tmp_path / "d.safetensors", Directions(vectors, "pca_all_steps", "h", ["pc0"], origin))
    report = main([
        "--model", str(tiny_model_dir), "--directions", str(tmp_path / "d.safetensors"), "--samples", "2",
        "--repeats", "1", "--warmup", "0", "--device", "cpu", "--baseline-rev", "HEAD",
    ])  # fmt: skip
    results = report["results"]
    assert results["baseline"]["seconds_per_image"] > 0 and results["ratio_baseline_vs_reuse"] > 0
    assert results["max_abs_pixel_difference_baseline"] < 1e-5
    with pytest.raises(SystemExit):
        main(["--directions", str(tmp_path / "d.safetensors"), "--baseline-rev", "no-such-revision"])
