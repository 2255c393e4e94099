"""The DVC DAG (dvc.yaml): stage name = script name = step module, every stage declares the params its step reads
and the library code it runs, so that a change to either reruns the stage instead of leaving its committed
outputs stale."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.directions.methods import EVALUATED_METHODS, REGISTRY, directions_path
from pipeline.evaluation.records import EVALUATION_FOLDER
from pipeline.io.params import load_params
from pipeline.steps import preview
from pipeline.steps.evaluate import EvaluateConfig
from pipeline.steps.sections import step_module

ROOT = Path(__file__).resolve().parents[1]
DEFINED = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGES = {name: stage.get("do", stage) for name, stage in DEFINED.items()}
"""Every stage's definition; for a ``foreach`` stage its template (``${item}`` in place of the item)."""
FOREACH = {name: stage["foreach"] for name, stage in DEFINED.items() if "foreach" in stage}

OUTPUT_NEUTRAL_MODULES = {
    "pipeline/io/errors.py",  # exception types and their messages
    "pipeline/io/validation.py",  # checks that raise, never change a value
    "pipeline/io/tracking.py",  # W&B and console logging; metrics files are written by the stages themselves
    "pipeline/io/params.py",  # reads and validates params.yaml, whose sections are the stages' params deps
    "pipeline/io/launch.py",  # shard orchestration; the merged outputs equal an unsharded run's (test_launch.py)
    "pipeline/io/files.py",  # atomic writes of bytes computed elsewhere
    "pipeline/steps/sections.py",  # the params schemas, each validated where its own step module is a dependency
}


def _paths(entries: list) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in entries}


def _dependencies(stage: dict) -> set[str]:
    return _paths(stage.get("deps", []))


def _resolved(path: str) -> str:
    """A dependency with its ``${<params key>}`` templates (all but ``${item}``) replaced by params.yaml's values,
    as DVC resolves them (a stage's data named by its params, such as ``${train_classifier.images}``)."""
    params = load_params(ROOT / "params.yaml")
    return re.sub(r"\$\{(?!item\})([\w.]+)\}", lambda match: str(OmegaConf.select(params, match.group(1))), path)


PRODUCED = {
    path for stage in STAGES.values() for key in ("outs", "metrics", "plots") for path in _paths(stage.get(key, []))
}  # written by a stage: absent from a fresh clone until `dvc repro`


def _module_file(module: str) -> Path | None:
    """The source file of a ``pipeline`` module (a package's ``__init__.py``), or None for a name inside one."""
    path = ROOT / Path(*module.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(path: Path) -> set[Path]:
    """The ``pipeline`` source files that ``path`` imports at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for alias in node.names:
                target = _module_file(f"{node.module}.{alias.name}") or _module_file(node.module)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {p for a in node.names if a.name.startswith("pipeline.") and (p := _module_file(a.name))}
    return found


def _library_closure(script: Path, stop: frozenset[str] = frozenset()) -> set[str]:
    """Every ``pipeline`` file the script runs: its imports, theirs, and so on (package ``__init__`` files too).
    The imports of a module in ``stop`` are not followed (it is reached, but what it reaches is not)."""
    seen: set[Path] = set()
    todo = list(_imports(script))
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        parents = [ROOT / Path(*path.relative_to(ROOT).parts[:i]) / "__init__.py" for i in range(1, len(path.parts))]
        todo += [p for p in parents if p.is_file() and p.is_relative_to(ROOT / "pipeline")]
        if path.relative_to(ROOT).as_posix() not in stop:
            todo += _imports(path)
    return {path.relative_to(ROOT).as_posix() for path in seen}


def _has_code(path: Path) -> bool:
    """Whether a module holds more than a docstring (a docstring-only package ``__init__`` changes no output)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def _needed_code(name: str) -> set[str]:
    """The library files whose change can change the stage's outputs: its import closure, not followed through
    the output-neutral modules and without them."""
    modules = _library_closure(ROOT / "stages" / f"{name}.py", frozenset(OUTPUT_NEUTRAL_MODULES))
    return {module for module in modules - OUTPUT_NEUTRAL_MODULES if _has_code(ROOT / module)}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_own_script_and_step(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name}" + (" ${item}" if name in FOREACH else "")
    assert f"stages/{name}.py" in _dependencies(stage)
    assert f"pipeline/steps/{name}.py" in _dependencies(stage)
    concrete = [_resolved(dep) for dep in _dependencies(stage) if "${item}" not in dep]
    produced = PRODUCED | {path.rsplit("/", 1)[0] for path in PRODUCED}  # a folder of foreach outputs counts
    missing = [dep for dep in concrete if dep not in produced and not (ROOT / dep).exists()]
    assert not missing, f"stage {name}: dependencies that no stage writes and that do not exist: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_exactly_the_library_code_it_runs(name: str) -> None:
    declared = {dep for dep in _dependencies(STAGES[name]) if dep.startswith("pipeline/")}
    needed = _needed_code(name)
    assert declared == needed, (
        f"stage {name}: add to its deps in dvc.yaml {sorted(needed - declared)}; remove {sorted(declared - needed)}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_are_the_keys_its_step_reads(name: str) -> None:
    """dvc.yaml's params of a stage are its step's ``PARAMS``, the only keys ``stage_params`` lets it read."""
    assert tuple(STAGES[name].get("params", [])) == step_module(name).PARAMS


def test_every_declared_params_key_exists_in_params_yaml() -> None:
    from omegaconf import OmegaConf

    params = load_params(ROOT / "params.yaml")
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            assert OmegaConf.select(params, key) is not None, f"stage {name}: params key '{key}' not in params.yaml"


def test_the_scan_follows_imports_through_steps_to_the_library() -> None:
    closure = _library_closure(ROOT / "stages" / "pca.py")
    assert {"pipeline/steps/pca.py", "pipeline/directions/pca.py", "pipeline/directions/format.py"} <= closure


def test_directions_files_are_the_method_registry() -> None:
    """Each stage that writes directions declares exactly its methods' files; preview and evaluate read them."""
    for name, stage in STAGES.items():
        written = {path for path in _paths(stage.get("outs", [])) if path.startswith("directions/")}
        assert written == {directions_path(m) for m, method in REGISTRY.items() if method.stage == name}, name
    read = {dep for dep in _dependencies(STAGES["preview"]) if dep.startswith("directions/")}
    assert read == {directions_path(method) for method in preview.METHODS}
    evaluated = load_params(ROOT / "params.yaml").evaluate.methods
    assert tuple(evaluated) == EVALUATED_METHODS == tuple(EvaluateConfig().methods)
    assert FOREACH["evaluate"] == "${evaluate.methods}"  # one evaluate stage per evaluated file
    read = {dep for dep in _dependencies(STAGES["evaluate"]) if dep.startswith("directions/")}
    assert read == {directions_path("${item}")}
    outs = _paths(STAGES["evaluate"]["outs"])
    assert outs == {EVALUATION_FOLDER.format(method="${item}")}
    assert {EVALUATION_FOLDER.format(method="")[:-1]} <= _dependencies(STAGES["evaluate_summary"])
