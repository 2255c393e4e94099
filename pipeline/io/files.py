"""Atomic file and folder writes, and resumable training checkpoints (safetensors + JSON only)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipeline.io.errors import ConfigError, PipelineError

_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
"""errno values that mean the disk refused the write (full, over quota, file too large, read-only, failing)."""


class OutputWriteError(PipelineError, OSError):
    """An output could not be written because the disk refused it (full, quota, read-only, I/O error).

    Nothing was published under the output's name. Also an ``OSError`` (with the original ``errno``), so
    code that catches ``OSError`` keeps working; ``str`` is one line naming the output.
    """


def _disk_error(target: Path, error: OSError) -> OSError:
    """``error`` as an :class:`OutputWriteError` naming ``target`` when the disk refused the write, else itself."""
    if isinstance(error, PipelineError) or error.errno not in _DISK_ERRNOS:
        return error
    reason = error.strerror or str(error).splitlines()[0]
    return OutputWriteError(error.errno, f"output '{target}': {reason}; nothing was written under that name")


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target`` (file or folder).

    Nothing is ever visible under the target name until the writer finished; a crash leaves only a
    hidden ``.tmp-*`` entry, which the next write removes. A write the disk refuses (full, quota,
    read-only) raises :class:`OutputWriteError`, one line naming the target, with the temporary removed.
    """
    target = Path(target)
    tmp: Path | None = None
    backup = target.with_name(f".tmp-{target.name}-old")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if backup.is_dir() and not target.exists():
            os.replace(backup, target)  # a crash between the two renames below: the old folder comes back
        for stale in target.parent.glob(f".tmp-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent)) / f"out{suffix}"
        yield tmp
        if target.is_dir() and not target.is_symlink():
            os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(backup, target)
                raise
            shutil.rmtree(backup)
        else:
            os.replace(tmp, target)
    except OSError as error:
        converted = _disk_error(target, error)
        if converted is error:
            raise
        raise converted from error
    finally:
        if tmp is not None:
            shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save a dict of tensors to a safetensors file atomically (tensors are made contiguous, on CPU).

    Equal tensors and metadata give byte-equal files (see :func:`canonicalize_header`), so DVC hashes of
    outputs are reproducible across runs.
    """
    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        canonicalize_header(tmp)


def load_tensors(
    path: str | Path, what: str, error: type[Exception] = ConfigError, missing_hint: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a whole safetensors file, on the CPU. A missing or unreadable file raises
    ``error`` with one line naming ``what`` and the path (``missing_hint`` is appended when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} '{path}': not found{missing_hint}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()  # a safetensors handle, not a dict: it cannot be iterated itself
            tensors = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError) as failure:
        raise error(f"{what} '{path}': not a readable safetensors file ({failure})") from failure
    return tensors, metadata


def canonicalize_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header in place with its metadata keys sorted.

    safetensors writes the metadata in hash-map order, which differs between processes, so the same
    content would otherwise hash differently from run to run. The rewritten header has the same length
    (only the order changes), padded with spaces as the format allows; tensor data is untouched.
    """
    with Path(path).open("r+b") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return  # another JSON escaping than safetensors' own; the file stays valid as written
        handle.seek(8)
        handle.write(text.ljust(size, b" "))


def fingerprint_text(fingerprint: Mapping[str, Any] | None) -> str:
    """The canonical JSON of a run's fingerprint (sorted keys, non-JSON values as ``str``) that resumable
    state is stamped with; two fingerprints match when their texts are equal."""
    return json.dumps(fingerprint or {}, sort_keys=True, default=str)


class TrainingCheckpoint:
    """A resumable checkpoint folder: model/EMA weights (safetensors), optimizer state and a JSON state.

    The folder is replaced atomically, so a run killed while saving resumes from the previous one. The
    checkpoint belongs to one ``fingerprint`` (the training config): a checkpoint written under another one
    (for example before ``steps`` or the learning rate changed) is never resumed, and the next save replaces it.
    """

    def __init__(self, folder: str | Path, fingerprint: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        self.fingerprint = json.loads(fingerprint_text(fingerprint))

    def exists(self) -> bool:
        """True when a complete checkpoint of this fingerprint is present."""
        state = self.folder / "state.json"
        return state.is_file() and json.loads(state.read_text()).get("fingerprint") == self.fingerprint

    def save(self, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> None:
        """Store ``step``, each module's state dict and the optimizer state."""
        with atomic_path(self.folder) as tmp:
            tmp.mkdir()
            for name, module in modules.items():
                save_file(
                    {k: v.contiguous() for k, v in module.state_dict().items()},
                    str(tmp / f"{name}.safetensors"),
                )
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": self.fingerprint}))

    def load(
        self,
        modules: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        map_location: str | torch.device = "cpu",
    ) -> int:
        """Restore modules and optimizer in place; return the step the checkpoint was taken at."""
        for name, module in modules.items():
            module.load_state_dict(
                load_file(str(self.folder / f"{name}.safetensors"), device=str(map_location))
            )
        optimizer.load_state_dict(
            torch.load(self.folder / "optimizer.pt", map_location=map_location, weights_only=True)
        )
        return int(json.loads((self.folder / "state.json").read_text())["step"])


def save_with(writer: Callable[[Path], None], target: str | Path) -> None:
    """Run ``writer(tmp_folder)`` (for example a ``save_pretrained``) and atomically publish the folder."""
    with atomic_path(target) as tmp:
        writer(tmp)


WORK_ROOT = Path(".work")
"""Where stages keep finished units of an interrupted run (relative to the working directory; git-ignored)."""


class WorkCache:
    """Finished units of one stage run kept on disk, so that a killed run resumes where it stopped.

    A unit is a dict of tensors saved atomically under a string key. The folder belongs to one
    ``fingerprint`` (for example the stage's params and the signatures of its input files): opening it with
    another fingerprint empties it first, so a changed config or input never reuses stale work. The stage
    calls :meth:`clear` once its outputs are written. ``WorkCache(None)`` keeps nothing (library use).
    Loaded units are bit-identical to computed ones, so a resumed run writes the same outputs. With ``join`` (a
    shard job filling its stage's folder beside other jobs) a folder not stamped with ``fingerprint`` is a
    ConfigError instead of being emptied: emptying it would delete the other jobs' units, and units of another
    fingerprint would reach the stage.
    """

    def __init__(self, folder: str | Path | None, fingerprint: Mapping[str, Any] | None = None, join: bool = False):
        self.folder = None if folder is None else Path(folder)
        self.resumed = 0
        if self.folder is None:
            return
        stamp = fingerprint_text(fingerprint)
        stamp_file = self.folder / "fingerprint.json"
        stale = not stamp_file.is_file() or stamp_file.read_text() != stamp
        if join and stale:
            raise ConfigError(
                f"work folder '{self.folder}': not stamped by this job's stage with the same params, inputs and "
                "device type (run the stage where its device resolves to the jobs' device type)"
            )
        if self.folder.exists() and stale:
            shutil.rmtree(self.folder)
        if not stamp_file.is_file():
            with atomic_path(stamp_file, ".json") as tmp:
                tmp.write_text(stamp)

    def fetch(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The unit ``key``: loaded when a previous run finished it, else ``compute()`` saved and returned."""
        if self.folder is None:
            return compute()
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
        if path.is_file():
            self.resumed += 1
            return load_file(str(path))
        tensors = {name: value.detach().cpu().contiguous() for name, value in compute().items()}
        save_tensors(path, tensors, {"key": key})
        return tensors

    def clear(self) -> None:
        """Remove the folder (the stage's outputs are written; nothing is left to resume)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def input_signature(paths: Iterable[str | Path]) -> dict[str, list[int]]:
    """Size and modification time (ns) of every file under ``paths`` (files or folders), by path.

    Cheap even for multi-GB checkpoints; a replaced input changes it, which invalidates a :class:`WorkCache`.
    """
    signature: dict[str, list[int]] = {}
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.exists():
                status = path.stat()
                signature[path.as_posix()] = [status.st_size, status.st_mtime_ns]
    return signature


def stage_work(stage: str, params: Mapping[str, Any], inputs: Iterable[str | Path], join: bool = False) -> WorkCache:
    """The :class:`WorkCache` of DVC stage ``stage`` (``.work/<stage>``) for these params and input files
    (``join``: a shard job's, which the stage must have opened first; see :class:`WorkCache`)."""
    return WorkCache(WORK_ROOT / stage, {"params": params, "inputs": input_signature(inputs)}, join)
