"""Safety: weights only through safetensors or ``torch.load(weights_only=True)``, never
``trust_remote_code``, and no secret (the W&B API key) in anything the pipeline writes."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from pipeline.classifiers import read_state_dict
from pipeline.diffusion.models import load_model
from pipeline.io import params as params_module
from pipeline.io.errors import ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py")])
CONFIGS = sorted([*(ROOT / "conf").rglob("*.yaml"), ROOT / "params.yaml", ROOT / "dvc.yaml"])
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    """'torch.hub.load' for the expression torch.hub.load, '' for anything that is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        prefix = _dotted(node.value)
        return f"{prefix}.{node.attr}" if prefix else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_the_scan_covers_the_library_and_the_stages() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in SOURCES}
    expected = {"pipeline/diffusion/models.py", "pipeline/classifiers.py", "pipeline/io/files.py", "stages/generate.py"}
    assert expected <= names


def test_no_trust_remote_code_in_pipeline_stages_or_config() -> None:
    offenders = []
    for path in [*SOURCES, *CONFIGS]:
        text = path.read_text()
        if re.search(r"trust_remote_code\s*=\s*True|trust_remote_code\s*:\s*(true|True|yes)", text):
            offenders.append(path.relative_to(ROOT).as_posix())
        if path.suffix != ".py":
            continue
        for call in _calls(ast.parse(text)):
            value = _keyword(call, "trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not offenders, f"trust_remote_code is enabled (or not literally False) in {offenders}"


def test_every_torch_load_passes_weights_only_true() -> None:
    loads, offenders = [], []
    for path in SOURCES:
        text = path.read_text()
        where = path.relative_to(ROOT).as_posix()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            imported = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in imported:
                offenders.append(f"{where}:{node.lineno}: 'from torch import load' hides torch.load from this check")
        for call in _calls(tree):
            name = _dotted(call.func)
            if name in ("torch.load", "torch.hub.load_state_dict_from_url", "load_state_dict_from_url"):
                loads.append(f"{where}:{call.lineno}")
                if not _is_true(_keyword(call, "weights_only")):
                    offenders.append(f"{where}:{call.lineno}: {name} without weights_only=True")
        # A textual count as well, so that a call the AST test misses (an alias) is still noticed.
        textual = len(re.findall(r"\btorch\.load\(", "\n".join(line.split("#")[0] for line in text.splitlines())))
        in_docstrings = len(re.findall(r"``torch\.load\(", text))
        counted = sum(1 for call in _calls(tree) if _dotted(call.func) == "torch.load")
        if textual - in_docstrings != counted:
            offenders.append(f"{where}: {textual} 'torch.load(' in the text, {counted} torch.load calls parsed")
    assert not offenders, offenders
    assert len(loads) >= 2, f"expected the known torch.load call sites, found {loads}"


def test_nothing_unpickles_outside_torch_load() -> None:
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offenders += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                              if a.name.split(".")[0] in UNPICKLING_MODULES]  # fmt: skip
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
                offenders.append(f"{where}:{node.lineno}: from {node.module} import ...")
        for call in _calls(tree):
            if _is_true(_keyword(call, "allow_pickle")):
                offenders.append(f"{where}:{call.lineno}: allow_pickle=True")
    assert not offenders, offenders


class _RunsCode:
    """A pickled object whose unpickling would create a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_weights_that_carry_code_are_refused_without_running_it(tiny_unet: UNet2DModel, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    state = {name: value.clone() for name, value in tiny_unet.state_dict().items()}
    state["conv_in.weight"] = _RunsCode(marker)  # type: ignore[assignment]

    classifier_weights = tmp_path / "classifier.pt"
    torch.save(state, classifier_weights)
    with pytest.raises(ModelNotFoundError) as refused:
        read_state_dict(classifier_weights)
    assert "\n" not in str(refused.value) and "weights-only" in str(refused.value)
    assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice is not passed on

    model_folder = tmp_path / "unet"
    tiny_unet.save_pretrained(model_folder, safe_serialization=False)
    torch.save(state, model_folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelNotFoundError) as refused:
        load_model(str(model_folder), device="cpu")
    assert "\n" not in str(refused.value) and "diffusion_pytorch_model.bin" in str(refused.value)
    assert not marker.exists(), "unpickling ran code from a weights file"


def _scan(folder: Path, secret: bytes) -> tuple[list[str], int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return [str(path.relative_to(folder)) for path in files if secret in path.read_bytes()], len(files)


def test_the_wandb_api_key_is_written_to_no_params_log_metrics_or_run_file(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "secret-" + os.urandom(16).hex()
    environment = {
        "WANDB_API_KEY": secret,
        "WANDB_MODE": "offline",  # wins over logging.wandb.mode; a key would make "auto" go online
        "HOME": str(tmp_path / "home"),
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb_artifacts"),
        "HF_HUB_OFFLINE": "1",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    workspace = tmp_path / "workspace"
    workspace.mkdir()

    # params.yaml composed from conf/ by `python -m pipeline.io.params` (W&B mode auto, as committed).
    overrides = [
        f"model.source={tiny_model_dir}",
        "sampler.steps=2",
        "sampler.batch_size=2",
        "generate.num_samples=2",
        "generate.shard_size=2",
        f"logging.wandb.dir={tmp_path / 'runs'}",
        "device=cpu",
    ]
    command = [
        "pipeline.io.params",
        *overrides,
        "--conf-dir",
        str(ROOT / "conf"),
        "--out",
        str(workspace / "params.yaml"),
    ]
    monkeypatch.setattr(sys, "argv", command)
    params_module.main()
    assert "mode: auto" in (workspace / "params.yaml").read_text()

    # A stage with an offline W&B run, in its own process (fresh W&B service, logs under tmp_path).
    completed = subprocess.run(
        [sys.executable, "-m", "stages.generate"],
        cwd=workspace,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-2000:]
    runs = list((tmp_path / "runs").rglob("offline-run-*"))
    assert runs and (workspace / "metrics/generate.json").is_file(), "the stage must have logged an offline run"

    found, count = _scan(tmp_path, secret.encode())
    assert count > 10 and not found, f"the API key was written to {found}"
    captured = capfd.readouterr()
    for stream in (completed.stdout, completed.stderr, captured.out.encode(), captured.err.encode()):
        assert secret.encode() not in stream
