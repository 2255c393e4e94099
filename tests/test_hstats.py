"""Tests for pipeline.data.hstats: streaming means against in-memory ones, extremes, PCA passes, files, memory."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.data.hstats import (
    HStatsFileError,
    centered_batches,
    compute_hstats,
    default_fields,
    group_means,
    hspace_mean,
    load_hstats,
    save_hstats,
    select_extremes,
    threshold_groups,
)
from pipeline.data.store import Store, StoreSpec, open_store
from pipeline.data.store_writing import generate_store
from pipeline.diffusion.models import DiffusionModel
from pipeline.io.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

COUNT = 10
STEPS = 3


@pytest.fixture(scope="module")
def store(tiny_model: DiffusionModel, single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """10 samples at eta = 1 in shards of 4, 4 and 2; h of every step stored in float16, noise kept."""
    folder = tmp_path_factory.mktemp("hstats") / "store"
    spec = StoreSpec(steps=STEPS, eta=1.0, h_dtype="float16")
    generate_store(tiny_model, folder, range(COUNT), spec, shard_size=4, batch_size=4, progress=False)
    return open_store(folder)


def _direct_mean(store: Store, field: str, positions: list[int] | torch.Tensor) -> torch.Tensor:
    return store.load(field, positions, dtype=torch.float64).mean(dim=0)


def test_hspace_mean_equals_the_mean_of_all_h_at_once(store: Store) -> None:
    mean = hspace_mean(store, batch_size=3)
    assert mean.dtype == torch.float64 and mean.shape == (STEPS, 32, 8, 8)
    assert torch.allclose(mean, _direct_mean(store, "h", range(COUNT)), rtol=0, atol=1e-6)


def test_group_means_equal_direct_means_for_every_field(store: Store) -> None:
    groups = {"a": [0, 9, 4], "b": torch.tensor([5]), "smiling/top": torch.arange(COUNT)}
    means = group_means(store, groups, batch_size=3)
    assert default_fields(store) == ("h", "x_T", "x_0", "noise") and set(means) == set(default_fields(store))
    for field, by_group in means.items():
        assert set(by_group) == set(groups)
        for name, positions in groups.items():
            expected = _direct_mean(store, field, positions)
            assert by_group[name].dtype == torch.float64
            assert torch.allclose(by_group[name], expected, rtol=0, atol=1e-6), (field, name)


def test_compute_hstats_round_trips_through_one_file(store: Store, tmp_path: Path) -> None:
    groups = {"left": [1, 2, 3], "right/side": [7, 8]}
    stats = compute_hstats(store, groups, fields=("h", "x_T"), batch_size=4)
    assert torch.allclose(stats.means["h"], hspace_mean(store), rtol=0, atol=1e-12)
    assert torch.allclose(stats.means["x_T"], _direct_mean(store, "x_T", range(COUNT)), rtol=0, atol=1e-6)
    assert stats.group_sizes == {"left": 3, "right/side": 2} and stats.count == COUNT

    path = tmp_path / "hstats.safetensors"
    save_hstats(path, stats)
    loaded = load_hstats(path)
    assert loaded.count == COUNT and loaded.group_sizes == stats.group_sizes and loaded.source == store.header
    assert torch.equal(loaded.h_steps, store.h_steps)
    assert loaded.means.keys() == stats.means.keys()
    for field, mean in stats.means.items():
        assert torch.equal(loaded.means[field], mean)
        for group, group_mean in stats.group_means[field].items():
            assert torch.equal(loaded.group_means[field][group], group_mean)

    with pytest.raises(HStatsFileError, match="not found"):
        load_hstats(tmp_path / "absent.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(HStatsFileError, match="format None"):
        load_hstats(tmp_path / "other.safetensors")


def test_select_extremes_picks_the_top_and_bottom_k() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.95, 0.0], [0.1, 0.7], [0.5, 0.2]])
    extremes = select_extremes(scores, 2, ["smiling", "hat"])
    assert extremes.top.tolist() == [[3, 0], [1, 4]]
    assert extremes.bottom.tolist() == [[4, 1], [3, 0]]
    assert extremes.top.dtype == torch.int64
    groups = extremes.groups()
    assert list(groups) == ["smiling/top", "smiling/bottom", "hat/top", "hat/bottom"]
    assert groups["hat/bottom"].tolist() == [3, 0]
    tied = torch.tensor([[0.3], [0.9], [0.1], [0.9], [0.2], [0.5]])
    assert select_extremes(tied, 1).top.tolist() == [[1]]  # ties are broken by position
    assert select_extremes(scores, 1).names == ("attribute_0", "attribute_1")


def test_select_extremes_reports_unusable_attributes_in_one_line() -> None:
    scores = torch.tensor([[0.9, 0.3, 1.0], [0.2, 0.3, 0.0], [0.5, 0.3, 0.0], [0.4, 0.3, 0.0], [0.1, 0.3, 0.0]])
    names = ["smiling", "hat", "glasses"]
    cases = [
        (lambda: select_extremes(scores[:, :1], 3), "k 3: .* of 5 samples would overlap; need k <= 2"),
        (lambda: select_extremes(scores[:, :1], 0), "k 0"),
        (lambda: select_extremes(scores[:, :2], 1, names[:2]), "attribute 'hat': all 5 scores equal 0.3"),
        (lambda: select_extremes(scores[:, [0, 2]], 2, ["smiling", "glasses"]), "attribute 'glasses': .*not separated"),
        (lambda: select_extremes(scores, 1, ["a", "b"]), "2 names for 3 score columns"),
        (lambda: select_extremes(scores[0], 1), "expected a 2-D"),
    ]
    nan_scores = scores.clone()
    nan_scores[2, 1] = float("nan")
    cases.append((lambda: select_extremes(nan_scores, 1, names), "attribute 'hat': scores contain NaN"))
    for call, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as error:
            call()
        assert "\n" not in str(error.value)


def test_threshold_groups_split_at_the_threshold() -> None:
    scores = torch.tensor([[0.9, 0.6], [0.5, 0.7], [0.1, 0.2], [0.7, 0.4]])
    groups = threshold_groups(scores, 0.5, ["smiling", "hat"])
    assert groups["smiling/positive"].tolist() == [0, 3] and groups["smiling/negative"].tolist() == [2]
    assert groups["hat/positive"].tolist() == [0, 1] and groups["hat/negative"].tolist() == [2, 3]
    with pytest.raises(ConfigError, match=r"attribute 'hat': no sample scores above 0\.8; positive group empty"):
        threshold_groups(scores, 0.8, ["smiling", "hat"])


def test_group_means_rejects_bad_groups(store: Store) -> None:
    for groups, pattern in [
        ({"a": []}, "group 'a': empty"),
        ({"b": [3, 10]}, "group 'b': position 10 outside"),
        ({"c": [1, 1]}, "group 'c': contains repeated positions"),
        ({"d": [0.5]}, "group 'd': expected a 1-D"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            group_means(store, groups)
    with pytest.raises(ConfigError, match="field 'seeds': cannot be averaged"):
        group_means(store, {"a": [0]}, fields=["seeds"])


def test_centered_batches_is_a_reusable_pass_factory(store: Store) -> None:
    mean = hspace_mean(store)
    passes = centered_batches(store, mean, steps=[2, 0], batch_size=4)
    first, second = list(passes()), list(passes())
    assert [batch.shape for batch in first] == [(4, 2, 2048), (4, 2, 2048), (2, 2, 2048)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    h = store.load("h", range(COUNT), dtype=torch.float64)
    expected = (h[:, [2, 0]] - mean[[2, 0]]).reshape(COUNT, 2, -1)
    assert torch.allclose(torch.cat(first).double(), expected, rtol=0, atol=1e-6)
    every_step = torch.cat(list(centered_batches(store, mean, dtype=torch.float64)()))
    assert every_step.shape == (COUNT, STEPS, 2048) and every_step.dtype == torch.float64
    assert torch.allclose(every_step.mean(dim=0), torch.zeros(STEPS, 2048, dtype=torch.float64), atol=1e-12)

    with pytest.raises(ConfigError, match="mean shape"):
        centered_batches(store, mean[:2])
    with pytest.raises(ConfigError, match="h step 5"):
        centered_batches(store, mean, steps=[5])


class _LargestStorage(TorchDispatchMode):
    """Records the largest tensor storage (bytes) any operator reads or produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves((args, kwargs, result)):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.untyped_storage().nbytes())
        return result


def _streaming_peak(store: Store) -> int:
    """Largest storage touched by one run of every streaming path over ``store`` (batches of 4)."""
    half = len(store) // 2
    groups = {"first": torch.arange(half), "second": torch.arange(half, len(store))}
    passes: Callable = centered_batches(store, torch.zeros((2, 32, 8, 8), dtype=torch.float64), batch_size=4)
    with _LargestStorage() as probe:
        hspace_mean(store, batch_size=4)
        group_means(store, groups, batch_size=4)
        for _ in store.iter_batches(("h", "x_0"), batch_size=4):
            pass
        for _ in passes():
            pass
    return probe.largest


def test_streaming_memory_does_not_grow_with_the_sample_count(tiny_model: DiffusionModel, tmp_path: Path) -> None:
    spec = StoreSpec(steps=2, eta=0.0)
    peaks = []
    for count in (8, 32):
        folder = tmp_path / f"store-{count}"
        generate_store(tiny_model, folder, range(count), spec, shard_size=4, batch_size=4, progress=False)
        peaks.append(_streaming_peak(open_store(folder)))
    one_batch_of_h = 4 * 2 * 32 * 8 * 8 * 4
    assert peaks[0] == peaks[1]
    assert one_batch_of_h <= peaks[0] < 2 * one_batch_of_h
