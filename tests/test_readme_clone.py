"""The README's "Editing your own images" example runs as written, command by command, in a fresh clone of the
committed HEAD with its own empty DVC cache: `hspace-edit` first names the stage that makes the missing directions
file, then `dvc repro supervised` makes it and `hspace-edit` writes the grid, JSON and images the README promises."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
"""Where `dvc`, `python` and `hspace-edit` of this interpreter's environment live."""
TIMEOUT_S = 1200
"""Per command; `dvc repro supervised` on a fresh clone generates and labels the study's samples on the CPU."""
TAIL_CHARS = 3000
MISSING_MESSAGE = "make it with: dvc repro supervised"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
    pytest.mark.skipif(not (VENV_BIN / "dvc").is_file(), reason=f"needs the dvc executable in {VENV_BIN}"),
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git repository to clone (ROOT has no .git)"),
]


def _edit_commands() -> list[str]:
    """The shell commands of the bash block right under the README's heading "Editing your own images", in order,
    with their `# comments` stripped."""
    text = (ROOT / "README.md").read_text()
    assert "## Editing your own images" in text, "README.md has no section '## Editing your own images'"
    section = text.split("## Editing your own images", 1)[1].split("\n## ", 1)[0]
    match = re.match(r"\s*```bash\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the section 'Editing your own images' no longer starts with a ```bash block"
    commands = []
    for line in match.group(1).replace("\\\n", " ").splitlines():
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("HSPACE_DEBUG", None)  # the one-line errors of a user's run
    return env


def _run(command: str, clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shlex.split(command), cwd=clone, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return f"stdout tail:\n{result.stdout[-TAIL_CHARS:]}\nstderr tail:\n{result.stderr[-TAIL_CHARS:]}"


def _cache_settings(clone: Path) -> list[str]:
    """Every `cache` section option of the clone's DVC config files (none: the clone's own .dvc/cache)."""
    found = []
    for name in ("config", "config.local"):
        path = clone / ".dvc" / name
        if path.is_file():
            parser = configparser.ConfigParser(strict=False)
            parser.read_string(path.read_text())
            found += [f"{name}: {section}.{key}" for section in parser.sections() if section.strip() == "cache"
                      for key in parser[section]]  # fmt: skip
            found += [f"{name}: {section}.cache.dir" for section in parser.sections()
                      if section.strip() == "core" and "cache.dir" in parser[section]]  # fmt: skip
    return found


def test_readme_edit_example_runs_in_a_fresh_clone(tmp_path: Path) -> None:
    started = time.monotonic()
    commands = _edit_commands()
    assert len(commands) == 2, f"expected `dvc repro supervised` then one `hspace-edit` line, got {commands}"
    repro, edit = commands
    assert shlex.split(repro) == ["dvc", "repro", "supervised"], f"first command changed: {repro!r}"
    edit_args = shlex.split(edit)
    assert edit_args[0] == "hspace-edit", f"second command is not hspace-edit: {edit!r}"
    assert "--out" not in edit_args, "the test reads the default output folder edits/; the README now sets --out"
    for option, values in (("--directions", ["directions/supervised.safetensors"]), ("--names", ["smiling"]),
                           ("--scales", ["2", "4"])):  # fmt: skip
        assert option in edit_args, f"{edit!r}: no {option}"
        start = edit_args.index(option) + 1
        assert edit_args[start : start + len(values)] == values, f"{edit!r}: {option} is not {' '.join(values)}"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True, text=True)
    assert not _cache_settings(clone), f"the clone's DVC config sets a cache: {_cache_settings(clone)}"
    assert not (clone / ".dvc/cache").exists(), "a fresh clone starts with no DVC cache"
    assert not (clone / "directions/supervised.safetensors").exists(), "the directions file is a DVC output"
    env = _environment()

    # before `dvc repro`: the directions file is missing and the error names the stage that makes it
    early = _run(edit, clone, env)
    assert early.returncode != 0, f"{edit!r} succeeded without the directions file\n{_tail(early)}"
    error_lines = early.stderr.strip().splitlines()
    assert len(error_lines) == 1 and MISSING_MESSAGE in error_lines[0], (
        f"{edit!r} before `dvc repro` should fail with one line naming `dvc repro supervised`\n{_tail(early)}"
    )
    assert not (clone / "edits").exists()

    for command in commands:
        began = time.monotonic()
        result = _run(command, clone, env)
        took = time.monotonic() - began
        print(f"{command}: {took:.1f} s (exit {result.returncode})")
        assert result.returncode == 0, f"{command!r} failed with exit code {result.returncode}\n{_tail(result)}"

    assert (clone / "directions/supervised.safetensors").is_file()
    assert (clone / ".dvc/cache").is_dir(), "dvc repro should have filled the clone's own cache"
    out = clone / "edits"
    assert (out / "grid.png").is_file()
    details = json.loads((out / "edits.json").read_text())
    assert details["directions"]["file"] == "directions/supervised.safetensors"
    assert details["directions"]["names"] == ["smiling"]
    assert [image["file"] for image in details["images"]] == ["inputs/toyfaces/face_3.png"]
    edits = details["images"][0]["edits"]
    assert [(entry["direction"], entry["scale"]) for entry in edits] == [("smiling", 2.0), ("smiling", 4.0)]
    assert [(row["direction"], row["scale"]) for row in details["summary"]] == [("smiling", 2.0), ("smiling", 4.0)]
    images = sorted(path.relative_to(out / "images").as_posix() for path in (out / "images").rglob("*.png"))
    assert images == ["face_3/reconstruction.png", "face_3/smiling_+2.png", "face_3/smiling_+4.png"]
    print(f"total: {time.monotonic() - started:.1f} s")
