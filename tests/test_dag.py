"""The DVC DAG (dvc.yaml): stage name = script name, and every stage declares the library code it calls, so that
a change to that code reruns the stage instead of leaving its committed outputs stale."""

import ast
import importlib
import inspect
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

OUTPUT_NEUTRAL_MODULES = {
    "pipeline/io/errors.py",  # exception types and their messages
    "pipeline/io/tracking.py",  # W&B and console logging; metrics files are written by the stages themselves
    "pipeline/io/params.py",  # reads and validates params.yaml, whose sections are the stages' params deps
    "pipeline/io/launch.py",  # shard orchestration; the merged outputs equal an unsharded run's (test_launch.py)
    "pipeline/io/files.py",  # atomic writes of bytes computed elsewhere
}
OUTPUT_NEUTRAL_NAMES = {("pipeline/diffusion/models.py", "resolve_device")}  # the device, which is a param


def _paths(entries: list) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in entries}


def _dependencies(stage: dict) -> set[str]:
    return _paths(stage.get("deps", []))


PRODUCED = {
    path for stage in STAGES.values() for key in ("outs", "metrics", "plots") for path in _paths(stage.get(key, []))
}  # written by a stage: absent from a fresh clone until `dvc repro`


def _imported_library_files(script: Path) -> set[tuple[str, str]]:
    """(file defining it, imported name) for every ``from pipeline... import name`` in ``script``; a name
    re-exported by a package resolves to the module that defines it."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline"):
            continue
        package = importlib.import_module(node.module)
        for alias in node.names:
            try:
                target = importlib.import_module(f"{node.module}.{alias.name}")
            except ModuleNotFoundError:
                target = getattr(package, alias.name)
            module = target if inspect.ismodule(target) else sys.modules.get(getattr(target, "__module__", ""))
            path = Path((module or package).__file__).resolve()
            if path.is_relative_to(ROOT / "pipeline"):
                found.add((path.relative_to(ROOT).as_posix(), alias.name))
    return found


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_own_script(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name}"
    assert f"stages/{name}.py" in _dependencies(stage)
    missing = [dep for dep in _dependencies(stage) if dep not in PRODUCED and not (ROOT / dep).exists()]
    assert not missing, f"stage {name}: dependencies that no stage writes and that do not exist: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_the_library_modules_it_imports(name: str) -> None:
    imported = _imported_library_files(ROOT / "stages" / f"{name}.py")
    undeclared = sorted(
        f"{path} ({symbol})"
        for path, symbol in imported
        if path not in OUTPUT_NEUTRAL_MODULES
        and (path, symbol) not in OUTPUT_NEUTRAL_NAMES
        and path not in _dependencies(STAGES[name])
    )
    assert not undeclared, f"stage {name}: add to its deps in dvc.yaml: {', '.join(undeclared)}"


def test_the_scan_sees_the_imports() -> None:
    imported = _imported_library_files(ROOT / "stages" / "pca.py")
    assert ("pipeline/study.py", "study") in imported
    assert ("pipeline/directions/format.py", "save_directions") in imported  # re-exported by the package
