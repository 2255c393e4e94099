"""What `dvc plots show` and `dvc metrics show` print for the committed study: every declared plot renders with a
template that has the fields it draws, and the metrics files stay summaries."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.io import plots_page
from pipeline.io.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MAX_METRIC_NUMBERS = 120
"""Numbers in all declared metrics files together: `dvc metrics show` and `dvc exp show` print one column per
distinct key, so the files hold headlines and the details live in files not declared as metrics
(plots/evaluate_summary.json, plots/pullback_details.json, plots/evaluate/<method>/judge.json)."""
MAX_FILE_NUMBERS = 25
"""Numbers in one metrics file: about the columns one `dvc metrics show <file>` line can hold legibly."""
TERMINAL_COLUMNS = 120
"""The terminal width every comparison recipe of docs/usage.md fits."""
SWEEP_EXPERIMENT_CELL = len("├── 363da8d [unmoved-flagstone]")
"""The widest Experiment cell of a sweep's rows (a generated name of two words); on the committed study the column
is as wide as its header, `Experiment`."""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]
"""Chromium flags that leave a page no network: no name resolves and every request goes to a closed port."""
VIEW_PROBE = (
    "<script>const errors = [];"
    "addEventListener('error', e => errors.push(String(e.message)));"
    "addEventListener('unhandledrejection', e => errors.push(String(e.reason)));"
    "addEventListener('load', () => setTimeout(() => { document.title = JSON.stringify({errors, drawn:"
    " [...document.querySelectorAll('.vega-embed')].filter(v => v.querySelector('canvas.marks, svg.marks'))"
    ".map(v => v.id)}); }, 1000));</script>"
)
"""Put first in <head>: the page's uncaught errors, and the ids of the vega-embed views that drew their marks, go
to the title as JSON once the page has loaded."""

needs_dvc = pytest.mark.skipif(
    shutil.which("dvc") is None or not (ROOT / ".git").exists(), reason="needs dvc and a git clone"
)
needs_vega_package = pytest.mark.skipif(
    importlib.util.find_spec(plots_page.PACKAGE) is None, reason="needs the plots extra (pip install -e '.[plots]')"
)


def _dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _declared_plots() -> dict[str, dict[str, Any]]:
    return {name: props for entry in _dvc_yaml()["plots"] for name, props in entry.items()}


def _declared_metrics() -> list[str]:
    files = []
    for stage in _dvc_yaml()["stages"].values():
        for entry in stage.get("metrics", []):
            files.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return files


def _declared_outputs() -> list[str]:
    """Every path a stage writes (outs, metrics and plots) and every top-level plot; a ``foreach`` stage's paths
    as their templates (``${item}`` for the item)."""
    dvc_yaml = _dvc_yaml()
    paths = list(_declared_plots())
    for stage in dvc_yaml["stages"].values():
        stage = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            paths += [next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage.get(kind, [])]
    return paths


def _comparison_recipes() -> list[str]:
    """The `dvc exp show` and `dvc metrics show` lines of the "Comparing experiments" block of docs/usage.md (its
    first bash block), continued lines joined."""
    text = (ROOT / "docs/usage.md").read_text()
    section = text[text.index("**Comparing experiments.**") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("\n```\n")]
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.startswith(("dvc exp show", "dvc metrics show"))]


def _numbers(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_numbers(item) for item in value.values())
    if isinstance(value, list):
        return sum(_numbers(item) for item in value)
    return int(isinstance(value, int | float) and not isinstance(value, bool))


@needs_dvc
def test_every_declared_plot_renders() -> None:
    result = subprocess.run(["dvc", "plots", "show", "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    shown = json.loads(result.stdout)
    assert "errors" not in shown, shown.get("errors")
    declared = _declared_plots()
    assert set(shown["data"]) == set(declared)
    for name, renders in shown["data"].items():
        assert [render["type"] for render in renders] == ["vega"], name
        spec = renders[0]["content"]
        rows = spec["data"]["values"]
        assert rows, f"{name}: no data"
        encoded = {
            channel["field"]
            for view in (spec, spec.get("spec", {}))
            for channel in view.get("encoding", {}).values()
            if isinstance(channel, dict) and "field" in channel
        } | ({spec["facet"]["field"]} if "facet" in spec else set())
        missing = [field for field in encoded if not any(field in row for row in rows)]
        assert not missing, f"{name}: the template draws fields the data lacks: {missing}"


def test_plots_use_templates_that_fit_their_data() -> None:
    plots = _declared_plots()
    assert plots["plots/evaluate_methods.csv"]["template"].startswith("bar_horizontal")  # categories, not a line
    assert plots["plots/evaluate_curves.csv"]["template"] == "curves_by_direction"  # one line per direction
    assert plots["plots/pullback_spectrum.csv"]["template"] == "spectrum_by_t"  # one spectrum per t
    assert isinstance(plots["plots/jacobian_spectrum.csv"]["y"], list)  # one series per singular value
    for name in {props.get("template") for props in plots.values()} - {None, "linear", "bar_horizontal"}:
        template = json.loads((ROOT / ".dvc/plots" / f"{name}.json").read_text())
        assert template["data"]["values"] == "<DVC_METRIC_DATA>", name


def test_metrics_files_are_summaries() -> None:
    counts = {path: _numbers(json.loads((ROOT / path).read_text())) for path in _declared_metrics()}
    assert sum(counts.values()) <= MAX_METRIC_NUMBERS, counts
    assert max(counts.values()) <= MAX_FILE_NUMBERS, counts


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git clone")
def test_every_committed_metrics_or_plots_file_is_a_declared_output() -> None:
    """A file under metrics/ or plots/ that no stage writes any more (an output of an old protocol) would be shown
    and diffed as if it were current: each one is declared, or lies in a declared folder."""
    tracked = subprocess.run(["git", "ls-files", "metrics", "plots"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    patterns = [re.escape(path).replace(re.escape("${item}"), "[^/]+") + "(/.*)?" for path in _declared_outputs()]
    stale = [path for path in tracked if not any(re.fullmatch(pattern, path) for pattern in patterns)]
    assert tracked and not stale, f"committed but written by no stage (git rm them): {stale}"


@needs_dvc
@pytest.mark.parametrize("recipe", _comparison_recipes())
def test_comparison_recipe_fits_the_terminal(recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each recipe, run on the committed study in a terminal too wide to truncate it, prints no line wider than
    TERMINAL_COLUMNS once the Experiment column holds a sweep's rows (the baseline printed as its short sha)."""
    monkeypatch.setenv("COLUMNS", "400")
    _, subcommand, *args = shlex.split(recipe, comments=True)
    sha = ["--sha"] if subcommand == "exp" else []
    command = ["dvc", subcommand, *args, *sha]
    printed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    width = max(len(line.rstrip()) for line in printed.splitlines())
    assert width + SWEEP_EXPERIMENT_CELL - len("Experiment") <= TERMINAL_COLUMNS, printed


def test_the_comparison_block_has_exp_show_recipes() -> None:
    assert sum(recipe.startswith("dvc exp show") for recipe in _comparison_recipes()) >= 3


def test_dvc_plots_output_is_ignored() -> None:
    assert "/dvc_plots/" in (ROOT / ".gitignore").read_text().split()


@needs_vega_package
def test_the_offline_template_inlines_the_libraries_in_place_of_the_cdn_tags() -> None:
    page = plots_page.offline_template()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC adds its CDN tags only at {scripts}
    assert "<script src" not in page
    _, libraries = plots_page.library_scripts()
    assert len(libraries) == 3 and all(library in page for library in libraries)


def test_the_offline_template_without_its_package_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots_page, "PACKAGE", "no_such_vega_package")
    with pytest.raises(ConfigError, match=r"^the offline plots page needs the vega libraries: pip install"):
        plots_page.offline_template()


def _views_drawn_offline(page: Path) -> dict[str, list[str]]:
    """The errors and drawn views (``VIEW_PROBE``) of ``page`` opened in headless Chromium with no network."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + VIEW_PROBE, 1), encoding="utf-8")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", *OFFLINE, "--virtual-time-budget=10000",
         "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(html.unescape(result.stdout.split("<title>", 1)[1].split("</title>", 1)[0]))


@pytest.mark.slow
@needs_dvc
@needs_vega_package
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_dvc_plots_show_draws_every_plot_offline_with_the_offline_template(tmp_path: Path) -> None:
    """Every declared plot is a committed file, so a fresh clone draws them all: with the template written by
    ``python -m pipeline.io.plots_page`` each one draws its marks without a network, and DVC's default page, in the
    same sandbox, draws none (its libraries are on a CDN), which shows the sandbox has no network."""
    template = tmp_path / "offline.html"
    subprocess.run([sys.executable, "-m", "pipeline.io.plots_page", "--out", str(template)], cwd=ROOT, check=True)
    for out, options in (("offline", ["--html-template", str(template)]), ("default", [])):
        subprocess.run(["dvc", "plots", "show", *options, "-o", str(tmp_path / out)], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
    offline = _views_drawn_offline(tmp_path / "offline/index.html")
    assert offline["errors"] == []
    assert sorted(offline["drawn"]) == sorted(re.sub(r"[/.]", "_", name) for name in _declared_plots())
    default = _views_drawn_offline(tmp_path / "default/index.html")
    assert default["drawn"] == [] and default["errors"], default
