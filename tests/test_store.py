"""Tests for the samples store (pipeline.data.store, store_format, store_writing): format, resumable generation,
spec checks, validation on open, streaming reads."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import pipeline.data.store_writing as store_writing
from pipeline.data.store import (
    Store,
    StoreError,
    StoreIndex,
    StoreMismatchError,
    StoreSpec,
    open_store,
    seeds_fingerprint,
)
from pipeline.data.store_writing import generate_store, model_fingerprint, synthetic_store
from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid, initial_noise, sample, to_image_range
from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache, input_signature

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 3
SEEDS = list(range(100, 110))
SHARD_SIZE = 4
BATCH_SIZE = 3
SPEC = StoreSpec(steps=STEPS, eta=1.0)
SHARD_FILES = ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]


def _generate(model: DiffusionModel, folder: Path, **overrides: object) -> StoreIndex:
    arguments = {"seeds": SEEDS, "spec": SPEC, "shard_size": SHARD_SIZE, "batch_size": BATCH_SIZE, "progress": False}
    arguments.update(overrides)
    return generate_store(model, folder, **arguments)


def _visible(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


def _assert_identical_stores(folder: Path, reference: Store) -> None:
    """Same files byte for byte, and the same tensors (read back through the API)."""
    assert _visible(folder) == _visible(reference.folder)
    for name in _visible(reference.folder):
        assert (folder / name).read_bytes() == (reference.folder / name).read_bytes(), name
    other = open_store(folder, verify=True)
    everything = range(len(reference))
    for field in reference.fields:
        assert torch.equal(other.load(field, everything, dtype=None), reference.load(field, everything, dtype=None))


def _copy(reference: Store, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(reference.folder, folder)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_model: DiffusionModel, single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """An uninterrupted run: 10 samples at eta = 1 in shards of 4, 4 and 2, h of all 3 steps in float32."""
    folder = tmp_path_factory.mktemp("reference") / "store"
    index = _generate(tiny_model, folder)
    assert index.complete and index.generated == (0, 1, 2)
    return open_store(folder)


def test_round_trip_shapes_dtypes_and_metadata(reference: Store, tiny_model: DiffusionModel) -> None:
    assert _visible(reference.folder) == ["index.json", *SHARD_FILES]
    assert len(reference) == 10 and reference.seeds.tolist() == SEEDS
    assert reference.spec == SPEC and reference.model_id == tiny_model.model_id
    assert reference.h_shape == (32, 8, 8) and reference.sample_shape == (3, 16, 16)
    assert reference.h_steps.tolist() == [0, 1, 2]
    assert torch.equal(reference.timesteps, ddim_grid(tiny_model.scheduler, STEPS).timesteps)
    assert reference.stored_fields == ("seeds", "x_T", "x_0", "noise", "h")

    with safe_open(str(reference.folder / SHARD_FILES[2]), framework="pt") as handle:
        metadata = handle.metadata()
        stored_names = handle.keys()  # a safetensors handle cannot be iterated itself
        tensors = {name: handle.get_tensor(name) for name in stored_names}
    expected_shapes = {
        "seeds": ((2,), torch.int64),
        "x_T": ((2, 3, 16, 16), torch.float32),
        "x_0": ((2, 3, 16, 16), torch.float32),
        "noise": ((2, STEPS, 3, 16, 16), torch.float32),
        "h": ((2, STEPS, 32, 8, 8), torch.float32),
        "h_steps": ((STEPS,), torch.int64),
        "timesteps": ((STEPS,), torch.int64),
    }
    assert {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()} == expected_shapes
    description = json.loads(metadata["shard"])
    header = description["spec"]
    assert (description["shard_index"], description["start"]) == (2, 8)
    assert header["model_fingerprint"] == model_fingerprint(tiny_model)
    assert header["seeds_sha256"] == seeds_fingerprint(torch.tensor(SEEDS))
    assert (header["count"], header["shard_size"], header["eta"], header["steps"]) == (10, 4, 1.0, STEPS)
    assert (header["format"], header["format_version"], header["hspace_location"]) == ("hspace-samples", 1, "after")

    index = json.loads((reference.folder / "index.json").read_text())
    assert index["spec"] == header
    for entry, name in zip(index["shards"], SHARD_FILES, strict=True):
        data = (reference.folder / name).read_bytes()
        assert entry["file"] == name and entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    # Shard by shard, the store holds exactly what sample() returns for those seeds.
    for shard, begin in enumerate(range(0, 10, SHARD_SIZE)):
        seeds = SEEDS[begin : begin + SHARD_SIZE]
        direct = sample(tiny_model, seeds, settings=DecodeSettings(steps=STEPS, eta=1.0, batch_size=BATCH_SIZE))
        positions = range(begin, begin + len(seeds))
        for field in ("x_T", "x_0", "noise", "h"):
            assert torch.equal(reference.load(field, positions), getattr(direct, field)), (shard, field)


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    reference: Store, tiny_model: DiffusionModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "store"
    real_sample = store_writing.sample
    calls: list[list[int]] = []

    def crash_on_second_shard(model: DiffusionModel, seeds: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(seeds.tolist())
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_sample(model, seeds, *args, **kwargs)

    monkeypatch.setattr(store_writing, "sample", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _generate(tiny_model, folder)
    assert _visible(folder) == [SHARD_FILES[0]]  # no partial shard, no index

    def count_calls(model: DiffusionModel, seeds: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(seeds.tolist())
        return real_sample(model, seeds, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(store_writing, "sample", count_calls)
    index = _generate(tiny_model, folder)
    assert index.generated == (1, 2) and calls == [SEEDS[4:8], SEEDS[8:]]
    _assert_identical_stores(folder, reference)


def test_a_kill_while_writing_leaves_no_partial_shard(
    reference: Store, tiny_model: DiffusionModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "store"

    def write_half_then_die(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise RuntimeError("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", write_half_then_die)
        with pytest.raises(RuntimeError, match="killed while writing"):
            _generate(tiny_model, folder)
    assert list(folder.iterdir()) == []
    _generate(tiny_model, folder)
    _assert_identical_stores(folder, reference)


def test_a_damaged_shard_and_stale_temporary_files_are_regenerated(
    reference: Store, tiny_model: DiffusionModel, tmp_path: Path
) -> None:
    folder = _copy(reference, tmp_path)
    damaged = folder / SHARD_FILES[1]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    stale = folder / ".tmp-shard-00001.safetensors-stale"
    stale.mkdir()
    (stale / "out.safetensors").write_bytes(b"partial")

    index = _generate(tiny_model, folder)
    assert index.generated == (1,)
    assert not stale.exists()
    _assert_identical_stores(folder, reference)


def test_a_changed_spec_or_seed_list_is_refused_in_one_line(
    reference: Store, tiny_model: DiffusionModel, tmp_path: Path
) -> None:
    folder = _copy(reference, tmp_path)
    changes = {
        "eta": {"spec": StoreSpec(steps=STEPS, eta=0.5)},
        "h_dtype": {"spec": StoreSpec(steps=STEPS, eta=1.0, h_dtype="float16")},
        "capture_steps": {"spec": StoreSpec(steps=STEPS, eta=1.0, capture_steps=(0, 2))},
        "shard_size": {"shard_size": 5},
        "count": {"seeds": [*SEEDS, 7]},
        "seeds_sha256": {"seeds": list(reversed(SEEDS))},
    }
    for key, overrides in changes.items():
        with pytest.raises(StoreMismatchError) as error:
            _generate(tiny_model, folder, **overrides)
        message = str(error.value)
        assert "\n" not in message and f"{key}=" in message and "overwrite=True" in message, message

    (folder / "index.json").unlink()  # as after a crash: the shards alone are checked
    with pytest.raises(StoreMismatchError, match=r"shard-0000\d\.safetensors .*eta=1\.0 but eta=0\.5"):
        _generate(tiny_model, folder, spec=StoreSpec(steps=STEPS, eta=0.5))
    assert _visible(folder) == SHARD_FILES  # nothing was touched

    index = _generate(tiny_model, folder, seeds=SEEDS[:5], spec=StoreSpec(steps=STEPS, eta=0.5), overwrite=True)
    assert index.complete and index.generated == (0, 1)
    assert _visible(folder) == ["index.json", *SHARD_FILES[:2]]
    assert open_store(folder).spec.eta == 0.5


def test_open_store_names_missing_or_inconsistent_shards(reference: Store, tmp_path: Path) -> None:
    folder = _copy(reference, tmp_path)
    (folder / SHARD_FILES[1]).unlink()
    with pytest.raises(StoreError, match=r"shard-00001\.safetensors: listed in index\.json but missing"):
        open_store(folder)

    shutil.copy(reference.folder / SHARD_FILES[1], folder / SHARD_FILES[1])
    with (folder / SHARD_FILES[2]).open("ab") as handle:
        handle.write(b"extra")
    with pytest.raises(StoreError, match=r"shard-00002\.safetensors: \d+ bytes, index\.json says \d+"):
        open_store(folder)

    shutil.copy(reference.folder / SHARD_FILES[2], folder / SHARD_FILES[2])
    data = bytearray((folder / SHARD_FILES[0]).read_bytes())
    data[-1] ^= 0xFF  # same size, different contents: only the checksum notices
    (folder / SHARD_FILES[0]).write_bytes(bytes(data))
    open_store(folder)
    with pytest.raises(StoreError, match=r"shard-00000\.safetensors: SHA-256 differs"):
        open_store(folder, verify=True)

    (folder / "index.json").unlink()
    with pytest.raises(StoreError, match=r"no index\.json") as error:
        open_store(folder)
    assert "\n" not in str(error.value)
    with pytest.raises(StoreError, match="no such folder"):
        open_store(tmp_path / "absent")


def test_iter_batches_streams_in_seed_order_across_shard_boundaries(reference: Store) -> None:
    batches = list(reference.iter_batches(("seeds", "h", "x_0"), batch_size=3))
    assert [len(batch["seeds"]) for batch in batches] == [3, 3, 3, 1]
    assert set(batches[0]) == {"index", "seeds", "h", "x_0"}
    assert torch.cat([batch["seeds"] for batch in batches]).tolist() == SEEDS
    assert torch.cat([batch["index"] for batch in batches]).tolist() == list(range(10))
    all_h = torch.cat([batch["h"] for batch in batches])
    assert all_h.dtype == torch.float32 and torch.equal(all_h, reference.load("h", range(10)))

    whole = list(reference.iter_batches(["h"], batch_size=25, dtype=torch.float64))
    assert len(whole) == 1 and whole[0]["h"].dtype == torch.float64 and torch.equal(whole[0]["h"].float(), all_h)
    steps = torch.cat([batch["h"] for batch in reference.iter_batches(["h"], batch_size=4, h_steps=[2, 0])])
    assert torch.equal(steps, all_h[:, [2, 0]])
    noise = torch.cat([batch["noise"] for batch in reference.iter_batches(["noise"], batch_size=7)])
    assert torch.equal(noise, initial_noise((3, 16, 16), SEEDS, STEPS, 1.0)[1])


def test_load_gives_random_access_and_images(reference: Store) -> None:
    rows = reference.load("x_0", torch.tensor([9, 0, 5]))
    everything = reference.load("x_0", range(10))
    assert torch.equal(rows, everything[[9, 0, 5]])
    images = reference.images([9, 0, 5])
    assert torch.equal(images, to_image_range(rows)) and images.min() >= 0 and images.max() <= 1
    assert reference.load("seeds", [3]).tolist() == [103]

    for call, name in [
        (lambda: reference.load("h", [10]), "index 10"),
        (lambda: reference.load("h", []), "indices"),
        (lambda: reference.load("latents", [0]), "field 'latents'"),
        (lambda: reference.iter_batches(["h"], batch_size=0), "batch_size 0"),
        (lambda: reference.iter_batches(["h"], h_steps=[7]), "h step 7"),
    ]:
        with pytest.raises(ConfigError, match=name):
            call()


def test_float16_h_and_unstored_noise(reference: Store, tiny_model: DiffusionModel, tmp_path: Path) -> None:
    spec = StoreSpec(steps=STEPS, eta=1.0, h_dtype="float16", store_noise=False)
    _generate(tiny_model, tmp_path / "store", seeds=SEEDS[:5], spec=spec)
    small = open_store(tmp_path / "store")
    assert small.stored_fields == ("seeds", "x_T", "x_0", "h") and "noise" in small.fields
    assert small.load("h", [0], dtype=None).dtype == torch.float16
    positions = [4, 1]
    assert torch.equal(small.load("noise", positions), reference.load("noise", positions))
    assert torch.allclose(small.load("h", range(5)), reference.load("h", range(5)), rtol=1e-3, atol=1e-3)
    assert torch.allclose(small.load("x_0", range(5)), reference.load("x_0", range(5)), atol=1e-5)


def test_generation_does_not_depend_on_batch_size(reference: Store, tiny_model: DiffusionModel, tmp_path: Path) -> None:
    _generate(tiny_model, tmp_path / "store", batch_size=4)
    other = open_store(tmp_path / "store")
    for field in reference.fields:
        assert torch.allclose(other.load(field, range(10)), reference.load(field, range(10)), atol=1e-5), field


def test_partitions_share_one_store(reference: Store, tiny_model: DiffusionModel, tmp_path: Path) -> None:
    folder = tmp_path / "store"
    first = _generate(tiny_model, folder, partition=(1, 2))
    assert first.generated == (1,) and not first.complete and not (folder / "index.json").exists()
    second = _generate(tiny_model, folder, partition=(0, 2))
    assert second.generated == (0, 2) and second.complete
    _assert_identical_stores(folder, reference)


def test_spec_and_arguments_are_validated(tiny_model: DiffusionModel, tmp_path: Path) -> None:
    assert StoreSpec(steps=4, capture_steps=[3, 1]).capture_steps == (1, 3)
    assert StoreSpec(steps=4).capture_steps == (0, 1, 2, 3)
    assert StoreSpec(steps=4, eta=0.0, store_noise=True).store_noise is False
    for arguments, name in [
        ({"steps": 0}, "steps 0"),
        ({"steps": 3, "eta": 1.5}, "eta 1.5"),
        ({"steps": 3, "h_dtype": "int8"}, "h_dtype 'int8'"),
        ({"steps": 3, "capture_steps": (3,)}, "capture_steps index 3"),
        ({"steps": 3, "capture_steps": (1, 1)}, "repeated"),
        ({"steps": 3, "capture_steps": ()}, "empty"),
    ]:
        with pytest.raises(ConfigError, match=name):
            StoreSpec(**arguments)

    folder = tmp_path / "store"
    for overrides, name in [
        ({"seeds": [1, 2, 1]}, "seed 1: appears more than once"),
        ({"seeds": [-1]}, "seed -1"),
        ({"shard_size": 0}, "shard_size 0"),
        ({"batch_size": 0}, "batch_size 0"),
        ({"partition": (2, 2)}, "partition"),
        ({"spec": StoreSpec(steps=STEPS, hspace_location="nowhere")}, "hspace location 'nowhere'"),
        ({"spec": StoreSpec(steps=5000)}, "steps 5000"),
    ]:
        with pytest.raises(ConfigError, match=name):
            _generate(tiny_model, folder, **overrides)
    assert not folder.exists()


def test_a_folder_replaced_by_a_crashed_writer_comes_back(tmp_path):
    from pipeline.io.files import atomic_path

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    # A crash between the two renames of a folder replacement leaves only the backup.
    target.rename(tmp_path / ".tmp-model-old")
    with atomic_path(target) as tmp:
        assert (target / "weights").read_text() == "old"  # restored before anything else happens
        tmp.mkdir()
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert not (tmp_path / ".tmp-model-old").exists()


def test_safetensors_outputs_are_byte_identical_across_processes(tmp_path):
    """safetensors orders metadata by a per-process hash map; save_tensors makes the bytes canonical."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from pipeline.io.files import save_tensors; "
        "save_tensors(sys.argv[1], {'b': torch.ones(3), 'a': torch.zeros(2)}, "
        "{key: str(i) for i, key in enumerate('qwertyuiopasdfghjkl')})"
    )
    files = [tmp_path / f"run{i}.safetensors" for i in range(3)]
    for path in files:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=Path(__file__).resolve().parents[1])
    contents = [path.read_bytes() for path in files]
    assert contents[0] == contents[1] == contents[2]
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as handle:
        assert handle.metadata()["q"] == "0" and sorted(handle.keys()) == ["a", "b"]


# ------------------------------------------------------------------------------------- resumable stage work


def test_work_cache_computes_once_and_reloads_bit_identical_units(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.randn(3, 4, generator=torch.Generator().manual_seed(len(calls)))}

    first = WorkCache(tmp_path / "work", {"params": {"k": 3}}).fetch("spectra/0/7", compute)
    again = WorkCache(tmp_path / "work", {"params": {"k": 3}})
    reloaded = again.fetch("spectra/0/7", compute)
    assert len(calls) == 1 and again.resumed == 1
    assert torch.equal(first["value"], reloaded["value"])
    assert not list((tmp_path / "work").glob(".tmp-*"))


def test_work_cache_of_another_fingerprint_starts_empty_and_clear_removes_it(tmp_path):
    WorkCache(tmp_path / "work", {"params": {"k": 3}}).fetch("unit", lambda: {"x": torch.zeros(2)})
    changed = WorkCache(tmp_path / "work", {"params": {"k": 4}})
    assert changed.fetch("unit", lambda: {"x": torch.ones(2)})["x"].tolist() == [1.0, 1.0]
    assert changed.resumed == 0
    changed.clear()
    assert not (tmp_path / "work").exists()
    memoryless = WorkCache(None)
    assert memoryless.fetch("unit", lambda: {"x": torch.ones(1)})["x"].item() == 1.0
    assert not (tmp_path / "work").exists()


def test_input_signature_changes_when_an_input_file_is_replaced(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"a" * 10)
    before = input_signature([model, tmp_path / "absent"])
    assert list(before) == [(model / "weights.safetensors").as_posix()]
    (model / "weights.safetensors").write_bytes(b"b" * 11)
    assert input_signature([model]) != before


# ------------------------------------------------------------------------------------------ streaming at scale


def test_synthetic_store_has_a_real_layout_and_is_deterministic(tmp_path):
    store = synthetic_store(tmp_path / "a", 10, h_shape=(4, 2, 2), steps=3, shard_size=4)
    synthetic_store(tmp_path / "b", 10, h_shape=(4, 2, 2), steps=3, shard_size=4)
    assert len(store) == 10 and store.h_shape == (4, 2, 2) and store.h_steps.tolist() == [0, 1, 2]
    assert [shard.count for shard in store.shards] == [4, 4, 2]
    open_store(tmp_path / "a", verify=True)
    for shard in store.shards:
        assert (tmp_path / "a" / shard.file).read_bytes() == (tmp_path / "b" / shard.file).read_bytes()
    batch = next(store.iter_batches(("h",), batch_size=10, dtype=None))
    assert batch["h"].dtype == torch.float16 and batch["h"].shape == (10, 3, 4, 2, 2)


@pytest.mark.slow
def test_streaming_stages_peak_memory_does_not_grow_with_n():
    """hstats + PCA + supervised on synthetic stores of N = 128 and 1024 (h 256x8x8 at 2 steps, float16), each
    in a fresh process: holding every h in float32 would add 128 MiB at N = 1024, about +30% of the peak."""
    from benchmarks.streaming import measure

    result = measure([128, 1024], (256, 8, 8), steps=2)
    small, large = result["runs"]
    assert (small["num_samples"], large["num_samples"]) == (128, 1024)
    assert large["store_gib"] > 7 * small["store_gib"]
    assert result["relative_difference"] < 0.2, result
