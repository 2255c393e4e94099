"""The README's library examples run as written, on a fresh clone's committed model, directions and inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ("models", "inputs")
SMILING_FILE = ROOT / "tests/data/supervised_smiling.safetensors"  # stands for the DVC output (see test_edit.py)


def _library_examples() -> list[str]:
    """The python code blocks of the README's section "The library in a notebook", in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The library in a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.mark.usefixtures("single_thread")
def test_readme_library_examples_run_and_edit_the_face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = _library_examples()
    assert len(examples) == 2
    for name in COMMITTED:  # the examples' relative paths, as in a clone after dvc repro
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "directions").mkdir()
    (tmp_path / "directions/supervised.safetensors").symlink_to(SMILING_FILE)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for code in examples:  # the second example continues the first one's session, as in a notebook
        exec(compile(code, "README.md", "exec"), namespace)
    inverted, row, edited = namespace["inverted"], namespace["row"], namespace["edited"]
    assert float(inverted.reconstruction_mse.max()) <= 1e-3
    assert row.images.shape == (3, 3, 32, 32)
    assert torch.allclose(row.images[0], inverted.reconstruction[0], atol=1e-5)  # scale 0 is the reconstruction
    assert (tmp_path / "face_3_smiling.png").is_file()
    assert edited.shape == (3, 4, 3, 32, 32)
