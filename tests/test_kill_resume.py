"""Crash safety: the ``generate`` and ``label`` stages, SIGKILLed at random points and rerun,
end with outputs byte-identical to an uninterrupted run, and no partial file is ever visible under an output name.

Each stage run is a separate process that runs the stage module as ``__main__`` in a temporary workspace whose
params.yaml is composed from ``conf/`` with tiny overrides, and is killed with SIGKILL. By default the processes
are forked from a multiprocessing fork server that imported the stages once (``runpy.run_module("stages.generate",
run_name="__main__")``, what ``python -m stages.generate`` runs, without paying torch's and diffusers' import
for every process); the ``python -m`` variant starts every process with that command line. The whole module is
marked slow (``-m 'not slow'`` leaves it out; plain ``pytest`` runs it).

A kill lands after the process has started work on the outputs: for ``generate`` after an entry of
``data/samples`` appears or is replaced (a shard's temporary folder, a shard), plus a seeded random delay of up
to one shard-time; for ``label`` after it has opened a shard of the store (it is reading the samples), plus a
seeded random delay of up to the time the uninterrupted run took from opening the store to its end. Throughout,
a watcher thread lists the output folders every few milliseconds: every name it sees is either a hidden
``.tmp-*`` temporary or a complete file byte-identical to the uninterrupted run's file of that name (shards are
also parsed by safetensors). ``KILL_TEST_SEED`` in the environment changes the seed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import random
import runpy
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load as parse_safetensors

import pipeline.data.store_writing as store_writing
from pipeline.io.params import compose
from stages import evaluate, generate, hstats, jacobian, label, pca, pullback, supervised
from tests.helpers import tiny_study_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("KILL_TEST_SEED", "9"))
NUM_SAMPLES, SHARD_SIZE = 40, 4  # 10 shards: 3 kills of at most ~2 shards' progress each leave work
NUM_SHARDS = NUM_SAMPLES // SHARD_SIZE
GENERATE_KILLS, LABEL_KILLS = 3, 2
MAX_ATTEMPTS = 8
OUTPUT_FOLDERS = ("data", "data/samples", "metrics")
TEMP_PREFIX = ".tmp-"
RUN_TIMEOUT_S = 120.0
SPECTRAL = ("jacobian", "pullback", "evaluate@supervised")
"""The stages killed and resumed; ``name@item`` is an instance of a DVC ``foreach`` stage (``python -m stages.name
item``), whose work folder is ``.work/name@item``."""
SPECTRAL_KILLS = 2
WORK = ".work"


def _overrides(model_dir: Path) -> list[str]:
    changes = {"sampler.steps": 12, "sampler.eta": 1.0, "sampler.batch_size": 2,
               "generate.num_samples": NUM_SAMPLES, "generate.shard_size": SHARD_SIZE}  # fmt: skip
    return tiny_study_overrides(model_dir, ROOT / "models/toyfaces/classifier", changes)


def _output_files(workspace: Path) -> dict[str, bytes]:
    """Every file under the workspace except params.yaml (hidden temporaries included), by relative path."""
    return {
        path.relative_to(workspace).as_posix(): path.read_bytes()
        for path in sorted(workspace.rglob("*"))
        if path.is_file() and path.name != "params.yaml"
    }


class Watcher(threading.Thread):
    """Lists the output folders every few milliseconds and records every name that is neither a hidden
    temporary nor a complete copy of the uninterrupted run's file of that name."""

    def __init__(
        self,
        workspace: Path,
        reference: dict[str, bytes],
        folders: tuple[str, ...] = OUTPUT_FOLDERS,
        subfolders: frozenset[str] = frozenset({"data/samples"}),
    ) -> None:
        super().__init__(daemon=True)
        self.workspace = workspace
        self.reference = reference
        self.folders, self.subfolders = folders, subfolders
        self.problems: list[str] = []
        self.verified: set[tuple[str, int, int, int]] = set()
        self.temporaries: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.check_once()
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.check_once()

    def check_once(self) -> None:
        for folder in self.folders:
            try:
                names = os.listdir(self.workspace / folder)
            except FileNotFoundError:
                continue
            for name in names:
                self._check(f"{folder}/{name}", name)

    def _check(self, relative: str, name: str) -> None:
        if name.startswith(TEMP_PREFIX):
            self.temporaries.add(relative)
            return
        path = self.workspace / relative
        try:
            if path.is_dir():
                if relative not in self.subfolders:
                    self.problems.append(f"unexpected folder {relative}")
                return
            status = path.stat()
            key = (relative, status.st_ino, status.st_size, status.st_mtime_ns)
            if key in self.verified:
                return
            data = path.read_bytes()
        except FileNotFoundError:  # replaced or removed between listing and reading
            return
        expected = self.reference.get(relative)
        if expected is None:
            self.problems.append(f"{relative}: a name the uninterrupted run does not write")
        elif data != expected:
            self.problems.append(f"{relative}: {len(data)} bytes visible, not the complete {len(expected)}-byte file")
        elif relative.startswith("data/samples/shard-") and len(parse_safetensors(data)["seeds"]) == 0:
            self.problems.append(f"{relative}: a shard without samples")
        else:
            self.verified.add(key)


STAGE_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
}


def _command(stage: str) -> list[str]:
    """The module and arguments of ``stage`` (``name`` or a foreach instance ``name@item``)."""
    name, _, item = stage.partition("@")
    return [f"stages.{name}", *([item] if item else [])]


def run_stage_module(stage: str, workspace: str, log: str) -> None:
    """Body of a forked stage process: what ``python -m stages.<stage>`` runs, in ``workspace``, output to ``log``."""
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.environ.update(STAGE_ENVIRONMENT)
    import torch
    from tqdm.std import tqdm

    torch.set_num_threads(1)
    # tqdm's default lock holds a multiprocessing semaphore, which the fork server's resource tracker (shared with
    # this test process) would report as leaked after every SIGKILL; a thread lock does the same job here.
    tqdm.set_lock(threading.RLock())
    os.chdir(workspace)
    sys.argv = _command(stage)
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


class Forked:
    """A stage process forked from a fork server that has the stages imported (the default launcher)."""

    def __init__(self, stage: str, workspace: Path, log: Path) -> None:
        context = multiprocessing.get_context("forkserver")
        self.process = context.Process(target=run_stage_module, args=(stage, str(workspace), str(log)))
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return None if self.process.is_alive() else self.process.exitcode

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


class Command:
    """A stage process started as ``python -m stages.<stage>`` (cwd = the workspace)."""

    def __init__(self, stage: str, workspace: Path, log: Path) -> None:
        environment = dict(os.environ, **STAGE_ENVIRONMENT)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *_command(stage)], cwd=workspace, env=environment, stdout=handle, stderr=handle
            )
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int | None:
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()


Launcher = type[Forked] | type[Command]


@pytest.fixture(scope="module")
def fork_server() -> Iterator[None]:
    """A fork server (for :class:`Forked`) that imports the stages once; stopped after the module's tests."""
    multiprocessing.set_forkserver_preload([__name__, *(f"stages.{name}" for name in ("generate", "label", *SPECTRAL))])
    yield
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()
    multiprocessing.set_forkserver_preload([])


def _wait_for(process: Forked | Command, started: Callable[[], bool], deadline: float) -> bool:
    """Poll until ``started()`` (True) or the process ends (False)."""
    while time.monotonic() < deadline:
        if started():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    process.kill()
    raise AssertionError(f"no progress within {RUN_TIMEOUT_S} s (pid {process.pid})")


def _entries(folder: Path) -> dict[str, int]:
    """name -> inode of the entries of ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry.inode() for entry in entries}
    except FileNotFoundError:
        return {}


def _writes_in(folder: Path) -> Callable[[Forked | Command], Callable[[], bool]]:
    """Trigger: an entry of ``folder`` appeared or was replaced (a temporary, a new shard, a rewritten index)."""

    def trigger(process: Forked | Command) -> Callable[[], bool]:
        before = _entries(folder)
        return lambda: any(before.get(name) != inode for name, inode in _entries(folder).items())

    return trigger


class OpenedFiles:
    """Names of the files opened in one folder since this object was made (Linux inotify, IN_OPEN events).

    The kernel queues the events, so a process that opens a file for a millisecond is still seen.
    """

    IN_OPEN = 0x20
    _HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.descriptor = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.descriptor < 0 or libc.inotify_add_watch(self.descriptor, os.fsencode(folder), self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")
        self.names: set[str] = set()

    def read(self) -> set[str]:
        try:
            data = os.read(self.descriptor, 1 << 16)
        except BlockingIOError:
            return self.names
        offset = 0
        while offset < len(data):
            _, _, _, length = self._HEADER.unpack_from(data, offset)
            offset += self._HEADER.size
            name = data[offset : offset + length].rstrip(b"\0").decode()
            offset += length
            if name:  # events of the folder itself (it being listed) have no name
                self.names.add(name)
        return self.names

    def close(self) -> None:
        os.close(self.descriptor)


def _opens_a_shard(opened: OpenedFiles) -> Callable[[Forked | Command], Callable[[], bool]]:
    """Trigger: the stage process has opened a shard of the store (it is reading the samples)."""

    def trigger(process: Forked | Command) -> Callable[[], bool]:
        opened.read()
        opened.names.clear()  # opens before this process started do not count
        return lambda: any(name.startswith("shard-") for name in opened.read())

    return trigger


def _failed(stage: str, returncode: int | None, log: Path) -> str:
    tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
    return f"{stage} failed (exit {returncode}); end of {log}:\n{tail}"


def _kill_rounds(
    launcher: Launcher,
    stage: str,
    workspace: Path,
    log: Path,
    kills: int,
    trigger: Callable[[Forked | Command], Callable[[], bool]],
    max_delay: float,
    rng: random.Random,
    describe: Callable[[Path], str] | None = None,
) -> list[str]:
    """Launch ``stage`` until it has been SIGKILLed ``kills`` times, each after ``trigger`` fired plus a random
    delay in [0, max_delay]; returns a description of every attempt (``describe(workspace)``: what a kill left)."""
    describe = describe or _store_state
    done: list[str] = []
    killed = 0
    for _attempt in range(MAX_ATTEMPTS):
        if killed == kills:
            break
        process = launcher(stage, workspace, log)
        check = trigger(process)
        if not _wait_for(process, check, time.monotonic() + RUN_TIMEOUT_S):
            assert process.poll() == 0, _failed(stage, process.poll(), log)
            done.append("finished before starting work")
            continue
        delay = rng.uniform(0.0, max_delay)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        returncode = process.wait(RUN_TIMEOUT_S)
        if returncode == -signal.SIGKILL:
            killed += 1
            done.append(f"killed {delay * 1000:.0f} ms after starting work ({describe(workspace)})")
        else:
            assert returncode == 0, _failed(stage, returncode, log)
            done.append(f"finished within {delay * 1000:.0f} ms of starting work")
    assert killed == kills, f"{stage}: only {killed} of {kills} kills landed while it ran: {done}"
    return done


def _store_state(workspace: Path) -> str:
    shards = len(list((workspace / "data/samples").glob("shard-*")))
    labels = "labels visible" if (workspace / "data/labels.csv").is_file() else "no labels"
    return f"{shards} shards, {labels}"


def _finish(launcher: Launcher, stage: str, workspace: Path, log: Path) -> None:
    process = launcher(stage, workspace, log)
    returncode = process.wait(RUN_TIMEOUT_S)
    assert returncode == 0, _failed(stage, returncode, log)


@pytest.mark.parametrize("launcher", [Forked, Command], ids=["forked", "python-m"])
def test_killed_generate_and_label_resume_to_identical_outputs(
    launcher: Launcher, fork_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux inotify to see when the label stage reads the store")
    text = compose(ROOT / "conf", overrides=_overrides(tiny_model_dir))
    reference, workspace = tmp_path / "uninterrupted", tmp_path / "killed"
    for folder in (reference, workspace):
        folder.mkdir()
        (folder / "params.yaml").write_text(text)

    # The uninterrupted run (in this process, one thread like the stage processes), timing shards and labelling.
    shard_times: list[float] = []
    real_write_shard = store_writing._write_shard

    def timed_write_shard(*args: object, **kwargs: object) -> object:
        begin = time.perf_counter()
        result = real_write_shard(*args, **kwargs)
        shard_times.append(time.perf_counter() - begin)
        return result

    opened: list[float] = []
    real_open_store = label.open_store

    def timed_open_store(*args: object, **kwargs: object) -> object:
        opened.append(time.perf_counter())
        return real_open_store(*args, **kwargs)

    monkeypatch.setattr(store_writing, "_write_shard", timed_write_shard)
    monkeypatch.setattr(label, "open_store", timed_open_store)
    monkeypatch.chdir(reference)
    generate.main()
    label.main()
    label_time = time.perf_counter() - opened[0]  # from opening the store (the kill trigger) to the end
    monkeypatch.undo()
    expected = _output_files(reference)
    assert len(shard_times) == NUM_SHARDS and "data/labels.csv" in expected
    assert not any(TEMP_PREFIX in name for name in expected)

    rng = random.Random(SEED)
    log = tmp_path / "stages.log"
    samples = workspace / "data/samples"

    watcher = Watcher(workspace, expected)
    watcher.start()
    try:
        shard_time = statistics.median(shard_times)
        generate_rounds = _kill_rounds(
            launcher, "generate", workspace, log, GENERATE_KILLS, _writes_in(samples), shard_time, rng
        )
        _finish(launcher, "generate", workspace, log)
        watcher.check_once()  # verify the last shards now, so that the watcher does not open them during label
        opened = OpenedFiles(samples)
        try:
            label_rounds = _kill_rounds(
                launcher, "label", workspace, log, LABEL_KILLS, _opens_a_shard(opened), label_time, rng
            )
        finally:
            opened.close()
        _finish(launcher, "label", workspace, log)
    finally:
        watcher.stop()

    assert not watcher.problems, watcher.problems
    assert watcher.verified, "the watcher never saw a complete output"
    produced = _output_files(workspace)
    leftovers = sorted(name for name in produced if TEMP_PREFIX in name)
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert sorted(produced) == sorted(expected)
    for name, data in expected.items():
        assert produced[name] == data, f"{name} differs from the uninterrupted run's"
    print(f"generate: {generate_rounds}; label: {label_rounds}; temporaries seen: {len(watcher.temporaries)}")


def _spectral_overrides(model_dir: Path) -> list[str]:
    """A tiny study whose jacobian, pullback and evaluate stages each have several units of work."""
    changes = {
        "sampler.batch_size": 8,
        "directions.pca.n_components": 2,
        "directions.jacobian.num_samples": 3,
        "directions.jacobian.steps": "all",
        "directions.pullback.analysis_t": "[1.0,0.5]",
        "directions.pullback.curvedness_points": 3,
        "evaluate.methods": "[pca_all_steps,supervised,jacobian,pullback_global]",
    }
    return tiny_study_overrides(model_dir, ROOT / "models/toyfaces/classifier", changes)


def _work_state(stage: str) -> Callable[[Path], str]:
    def describe(workspace: Path) -> str:
        units = len(list((workspace / WORK / stage).glob("*.safetensors")))
        return f"{units} finished units in {WORK}/{stage}"

    return describe


def test_killed_jacobian_pullback_and_evaluate_resume_to_identical_outputs(
    fork_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the three is SIGKILLed twice at a random point of its run, then finished: the outputs equal the
    uninterrupted run's byte for byte, no partial file was ever visible, and the work folder is gone."""
    text = compose(ROOT / "conf", overrides=_spectral_overrides(tiny_model_dir))
    reference, workspace = tmp_path / "uninterrupted", tmp_path / "killed"
    reference.mkdir()
    (reference / "params.yaml").write_text(text)
    monkeypatch.chdir(reference)
    for stage in (generate, label, hstats, pca, supervised):
        stage.main()
    shutil.copytree(reference, workspace)  # the upstream outputs both runs start from
    durations = {}
    for name, run in zip(SPECTRAL, (jacobian.main, pullback.main, lambda: evaluate.main(["supervised"])), strict=True):
        begin = time.perf_counter()
        run()
        durations[name] = time.perf_counter() - begin
    monkeypatch.undo()
    expected = _output_files(reference)
    assert not (reference / WORK).exists() or not any((reference / WORK).iterdir()), "work folder left behind"
    assert {"directions/jacobian.safetensors", "directions/pullback_global.safetensors"} <= set(expected)
    assert "plots/evaluate/supervised/records.safetensors" in expected

    rng = random.Random(SEED)
    log = tmp_path / "stages.log"
    folders = ("directions", "metrics", "plots", "plots/evaluate", "plots/evaluate/supervised")
    watcher = Watcher(workspace, expected, folders, frozenset({"plots/evaluate", "plots/evaluate/supervised"}))
    watcher.start()
    rounds = {}
    try:
        for stage in SPECTRAL:
            trigger = _writes_in(workspace / WORK / stage)
            rounds[stage] = _kill_rounds(
                Forked, stage, workspace, log, SPECTRAL_KILLS, trigger, 0.8 * durations[stage], rng, _work_state(stage)
            )
            _finish(Forked, stage, workspace, log)
    finally:
        watcher.stop()

    assert not watcher.problems, watcher.problems
    produced = _output_files(workspace)
    assert not [name for name in produced if TEMP_PREFIX in name or name.startswith(WORK)], "leftovers"
    assert sorted(produced) == sorted(expected)
    for name, data in expected.items():
        assert produced[name] == data, f"{name} differs from the uninterrupted run's"
    resumed = [entry for entries in rounds.values() for entry in entries if "finished units" in entry]
    print(f"uninterrupted seconds {durations}; kills: {rounds}")
    assert resumed, "no kill landed while a stage was running"
