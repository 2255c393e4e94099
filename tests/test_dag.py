"""The DVC DAG (dvc.yaml): stage name = script name = step module, every stage declares the params its step reads
and the library code it runs, so that a change to either reruns the stage instead of leaving its committed
outputs stale."""

import ast
import functools
import inspect
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.directions.methods import EVALUATED_METHODS, METHODS, REGISTRY
from pipeline.io import artefacts
from pipeline.io.artefacts import EVALUATIONS, PREVIEWS, directions_path, evaluation_folder, preview_folder
from pipeline.io.params import DEFAULT_PARAMS, load_params
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
    "pipeline/io/artefacts.py",  # the artefact paths, which dvc.yaml declares too (test_artefacts_are_dvc_yaml_paths)
    "pipeline/steps/sections.py",  # the params schemas, each validated where its own step module is a dependency
}


def _paths(entries: list) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in entries}


def _dependencies(stage: dict) -> set[str]:
    return _paths(stage.get("deps", []))


@functools.cache
def _params():
    """The repository's params.yaml, read once for the module (no test changes it)."""
    return load_params(ROOT / "params.yaml")


def _resolved(path: str) -> str:
    """A dependency with its ``${<params key>}`` templates (all but ``${item}``) replaced by params.yaml's values,
    as DVC resolves them (a stage's data named by its params, such as ``${train_classifier.images}``)."""
    params = _params()
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


@functools.cache
def _imports(path: Path) -> frozenset[Path]:
    """The ``pipeline`` source files that ``path`` imports at module level or inside functions (each file parsed
    once for the module: the parametrized tests share the scan)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for alias in node.names:
                target = _module_file(f"{node.module}.{alias.name}") or _module_file(node.module)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {p for a in node.names if a.name.startswith("pipeline.") and (p := _module_file(a.name))}
    return frozenset(found)


@functools.cache
def _library_closure(script: Path, stop: frozenset[str] = frozenset()) -> frozenset[str]:
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
    return frozenset(path.relative_to(ROOT).as_posix() for path in seen)


@functools.cache
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

    params = _params()
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            assert OmegaConf.select(params, key) is not None, f"stage {name}: params key '{key}' not in params.yaml"


def test_the_scan_follows_imports_through_steps_to_the_library() -> None:
    closure = _library_closure(ROOT / "stages" / "pca.py")
    assert {"pipeline/steps/pca.py", "pipeline/directions/pca.py", "pipeline/directions/format.py"} <= closure


def test_directions_files_are_the_method_registry() -> None:
    """Each stage that writes directions declares exactly its methods' files; preview and evaluate read them, one
    ``foreach`` stage per file of their params list (``preview@<method>`` depends on that method's file only)."""
    for name, stage in STAGES.items():
        written = {path for path in _paths(stage.get("outs", [])) if path.startswith("directions/")}
        assert written == {directions_path(m) for m, method in REGISTRY.items() if method.stage == name}, name
    assert tuple(_params().preview.methods) == preview.METHODS == tuple(preview.PreviewConfig().methods)
    assert FOREACH["preview"] == "${preview.methods}"  # one preview stage per previewed file
    read = {dep for dep in _dependencies(STAGES["preview"]) if dep.startswith("directions/")}
    assert read == {directions_path("${item}")}
    assert _paths(STAGES["preview"]["outs"]) == {preview_folder("${item}")}
    assert {PREVIEWS} <= _dependencies(STAGES["report"])
    evaluated = _params().evaluate.methods
    assert tuple(evaluated) == EVALUATED_METHODS == tuple(EvaluateConfig().methods)
    assert FOREACH["evaluate"] == "${evaluate.methods}"  # one evaluate stage per evaluated file
    read = {dep for dep in _dependencies(STAGES["evaluate"]) if dep.startswith("directions/")}
    assert read == {directions_path("${item}")}
    outs = _paths(STAGES["evaluate"]["outs"])
    assert outs == {evaluation_folder("${item}")}
    assert {EVALUATIONS} <= _dependencies(STAGES["evaluate_summary"])


NOT_IN_DVC = {"checkpoint_folder"}
"""Artefacts that are no DVC outputs: resumable training state (git-ignored, like the work caches of .work/)."""
FROM_PARAMS = {"${train_classifier.images}", "${train_classifier.labels}", "${edit.inputs}", "${edit.directions}"}
"""Data dependencies named by params (their defaults are artefacts: the toy dataset, a directions file)."""


def _artefacts() -> dict[str, str]:
    """Every path of :mod:`pipeline.io.artefacts` by name; a per-method path as its ``foreach`` template
    (``${item}`` for the method)."""
    paths = {}
    for name, value in vars(artefacts).items():
        if name.startswith("_") or name in NOT_IN_DVC or name == "annotations":
            continue
        if isinstance(value, str):
            paths[name] = value
        elif inspect.isfunction(value) and value.__module__ == artefacts.__name__:
            paths[name] = value("${item}")
    return paths


def _same_name(one: str, other: str) -> bool:
    """Whether two path components name the same file, ``${item}`` in either matching any name."""
    pattern = re.escape(one).replace(re.escape("${item}"), "[^/]+")
    reverse = re.escape(other).replace(re.escape("${item}"), "[^/]+")
    return re.fullmatch(pattern, other) is not None or re.fullmatch(reverse, one) is not None


def _covers(declared: str, path: str) -> bool:
    """Whether a path declared in dvc.yaml accounts for ``path``: the same path, a folder that holds it, or a
    folder that ``path`` names and that holds the declared one (such as ``metrics`` for the metrics files)."""
    first, second = declared.split("/"), path.split("/")
    return all(_same_name(a, b) for a, b in zip(first, second, strict=False))


def _declared(stage: dict) -> set[str]:
    return set().union(*(_paths(stage.get(key, [])) for key in ("deps", "outs", "metrics", "plots")))


@functools.cache
def _named_artefacts(path: Path) -> frozenset[str]:
    """The names of :mod:`pipeline.io.artefacts` that a source file uses (imported by name, or as attributes
    of the imported module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == artefacts.__name__:
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "artefacts":
            names.add(node.attr)
    return frozenset(names)


def test_artefacts_are_dvc_yaml_paths() -> None:
    """Every path of pipeline/io/artefacts.py is declared in dvc.yaml, and every path dvc.yaml declares (outs,
    metrics, plots, and the data its stages depend on) is an artefact, params.yaml or named by params."""
    declared = set().union(*(_declared(stage) for stage in STAGES.values()))
    known = set(_artefacts().values()) | {
        function(method) for function in vars(artefacts).values()
        if inspect.isfunction(function) and function.__module__ == artefacts.__name__
        and function.__name__ not in NOT_IN_DVC for method in METHODS
    }  # fmt: skip
    undeclared = {name: path for name, path in _artefacts().items() if not any(_covers(d, path) for d in declared)}
    assert not undeclared, f"artefacts that dvc.yaml does not declare: {undeclared}"
    data = {path for path in declared if not path.startswith(("stages/", "pipeline/"))}
    data |= {path for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for path in entry}
    unknown = data - known - FROM_PARAMS - {str(DEFAULT_PARAMS)}
    assert not unknown, f"dvc.yaml paths missing from pipeline/io/artefacts.py: {sorted(unknown)}"


def _stage_artefacts(name: str) -> set[str]:
    """The artefacts that a stage's script, step module and package (``pipeline/<stage>/``, if any) name."""
    files = [ROOT / "stages" / f"{name}.py", ROOT / "pipeline" / "steps" / f"{name}.py"]
    files += sorted((ROOT / "pipeline" / name).glob("*.py"))
    return set().union(*(_named_artefacts(path) for path in files if path.is_file()))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_the_artefacts_its_code_names(name: str) -> None:
    """The artefacts that a stage's code names are its deps, outs, metrics or plots in dvc.yaml (an
    ``evaluate@${item}`` path is matched with its template)."""
    paths = _artefacts()
    named = _stage_artefacts(name) - NOT_IN_DVC
    declared = {_resolved(path) for path in _declared(STAGES[name])}  # a dep named by params: its value
    missing = {key: paths[key] for key in named if not any(_covers(d, paths[key]) for d in declared)}
    assert not missing, f"stage {name}: artefacts its code names that dvc.yaml does not declare for it: {missing}"


def test_the_artefact_scan_sees_scripts_steps_and_packages() -> None:
    assert {"REPORT", "EVALUATE_SUMMARY", "evaluation_grid", "METRICS_FOLDER"} <= _stage_artefacts("report")
    assert {"SAMPLES", "directions_path", "PULLBACK_DETAILS"} <= _stage_artefacts("pca") | _stage_artefacts("pullback")
