"""The report page: self-contained (every image a PNG data URI), one table row per method, missing inputs noted."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from pipeline.report.charts import line_chart
from pipeline.steps.report import build_report, write_report

METHODS = ["pca_per_step", "supervised", "pullback_global"]


class _Collector(HTMLParser):
    """Images, the rows of every table by id, and note paragraphs of a page."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.notes: list[str] = []
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._note: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        elif tag == "table":
            self._table = attributes.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "p" and attributes.get("class") == "note":
            self._note = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "p" and self._note is not None:
            self.notes.append("".join(self._note))
            self._note = None

    def handle_data(self, data):
        for part in (self._cell, self._note):
            if part is not None:
                part.append(data)


def _png(color, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _rate(rate: float, n: int = 8) -> dict:
    return {"rate": rate, "low": max(0.0, rate - 0.2), "high": min(1.0, rate + 0.2), "n": n}


def _side(target: str, towards: str, scale: float, clean: float) -> dict:
    return {
        "target": target, "towards": towards, "scale": scale, "status": "edge", "feasible": True, "distortion": 0.1,
        "flip": _rate(0.9), "clean_flip": _rate(clean), "broken": _rate(0.0), "any_off_target": _rate(0.5),
        "off_target": {"hat": _rate(0.25), "light_hair": _rate(0.5)},
        "curve": [{"scale": abs(scale), "flip": 0.9, "clean_flip": clean, "broken": 0.0, "distortion": 0.1}],
        "stop_at_flip": {"flip": _rate(0.9), "clean_flip": _rate(0.75), "broken": _rate(0.0)},
        "attributes_changed": {"mean": 0.625, "low": 0.25, "high": 1.0, "n": 8},
        "attribute_dependency": {"mean": 0.3, "max": 0.5, "max_attribute": "hat", "target": 2.0},
    }  # fmt: skip


@pytest.fixture()
def study(tmp_path):
    """A folder holding what the evaluate stage and the spectral stages write (small, made up); the
    supervised file lists smiling before eyeglasses, as the real one does."""
    (tmp_path / "params.yaml").write_text("evaluate:\n  num_samples: 4\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots/evaluate").mkdir(parents=True)
    directions = {
        "pca_per_step": [("pc0", None)],
        "supervised": [("smiling", "smiling"), ("eyeglasses", "eyeglasses")],
        "pullback_global": [("global/v0", None)],
    }
    details = {
        "settings": {"num_samples": 8, "max_broken": 0.05, "broken_check": {"detector": "rerender", "threshold": 0.1}},
        "methods": {
            method: [
                {"name": name, "target": target, "sides": {
                    "up": _side(target or "hat", "up", 1.0, 0.5), "down": _side(target or "hat", "down", -1.0, 0.25),
                }}
                for name, target in entries
            ]
            for method, entries in directions.items()
        },
    }  # fmt: skip
    for method, entries in details["methods"].items():
        (tmp_path / f"plots/evaluate/{method}").mkdir()
        judge = {"method": method, "settings": details["settings"], "directions": entries}
        (tmp_path / f"plots/evaluate/{method}/judge.json").write_text(json.dumps(judge, sort_keys=True))
    conditional = {"flip_plain": 0.9, "flip_conditional": 0.8, "partner_flip_plain": 0.5,
                   "partner_flip_conditional": 0.1, "new_off_target": 0.2, "new_off_target_attribute": "eyeglasses"}
    metrics = {
        "num_samples": 8, "untargeted_samples": 8, "unedited_broken": 0.0,
        "methods": {method: {"mean_clean_flip": 0.4} for method in directions},
        "conditional": {"smiling": {"up": conditional, "down": conditional}},
    }  # fmt: skip
    (tmp_path / "plots/evaluate_summary.json").write_text(json.dumps(metrics))
    (tmp_path / "metrics/pca.json").write_text(json.dumps({"explained": {"all": 0.5}, "seconds": 1.0}))
    header = "method,directions,mean_clean_flip,min_clean_flip,mean_broken,infeasible\n"
    (tmp_path / "plots/evaluate_methods.csv").write_text(
        header + "".join(f"{method},1,0.4,0.25,0.0,0\n" for method in METHODS)
    )
    rows = ["method,direction,side,target,scale,flip,clean_flip,broken,distortion,operating"]
    for method, entries in directions.items():
        for name, _ in entries:
            rows += [f"{method},{name},up,smiling up,{s},0.9,0.5,0.0,0.1,{int(s == 1)}" for s in (0.5, 1, 2)]
            rows += [f"{method},{name},down,smiling down,{-s},0.9,0.5,0.0,0.1,{int(s == 1)}" for s in (0.5, 1, 2)]
    (tmp_path / "plots/evaluate_curves.csv").write_text("\n".join(rows) + "\n")
    for method in METHODS:
        (tmp_path / f"plots/evaluate/{method}/grid.png").write_bytes(_png((200, 30, 30), (34, 52)))
    (tmp_path / "plots/pca_spectrum.csv").write_text("component,all_steps,per_step_mean\n0,0.5,0.4\n1,0.2,0.25\n")
    (tmp_path / "plots/pullback_spectrum.csv").write_text("t,index,sigma\n0.6,0,3.0\n0.6,1,2.0\n0.2,0,1.0\n0.2,1,0.5\n")
    (tmp_path / "plots/supervised_study").mkdir()
    summary = "mean_clean_flip,min_clean_flip,worst_side,mean_clean_flip_stop,mean_broken,infeasible"
    (tmp_path / "plots/supervised_study/variants.csv").write_text(
        f"variant,estimator,window,normalise_steps,injection,{summary}\n"
        "default,joint_regression,all,False,asyrp,0.5,0.25,smiling up,0.6,0.0,0\n"
        "mean_difference,mean_difference,all,False,asyrp,0.3,0.1,light_hair down,0.4,0.0,0\n"
    )
    (tmp_path / "plots/supervised_study/samples.csv").write_text(
        f"samples_per_side,draw,mean_cosine_to_all,{summary}\n"
        "10,0,0.3,0.2,0.0,hat up,0.3,0.0,0\n100,0,0.8,0.4,0.2,hat up,0.5,0.0,0\n"
        "all,0,1.0,0.5,0.25,smiling up,0.6,0.0,0\n"
    )
    return tmp_path


def _parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    collector.close()
    return collector


def _check_images(sources: list[str]) -> None:
    assert sources
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:40]
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG"


def test_the_page_is_self_contained_with_one_row_per_method(study):
    page = build_report(study)
    parsed = _parse(page)
    _check_images(parsed.images)
    # 3 grids, 2 curves per method, 2 spectra, the few-samples chart
    assert len(parsed.images) == 3 + 2 * 3 + 2 + 1
    assert [row[0] for row in parsed.tables["supervised-study"]] == ["default", "mean_difference"]
    assert [row[0] for row in parsed.tables["few-samples"]] == ["10", "100", "all"]
    assert parsed.tables["supervised"][0][-1] == "0.75 [0.55, 0.95] (n 8)"  # each sample stopped at its first flip
    assert [row[0] for row in parsed.tables["methods"]] == METHODS
    assert parsed.tables["conditional"][0][:2] == ["smiling", "up"]
    # the supervised tables keep the file's order (the grid's), whatever the JSON's key order
    assert [row[0] for row in parsed.tables["table-supervised"]] == ["smiling", "smiling", "eyeglasses", "eyeglasses"]
    assert [row[0] for row in parsed.tables["supervised"]][::2] == ["smiling", "eyeglasses"]
    assert parsed.tables["supervised"][0][5] == "0.50 [0.30, 0.70] (n 8)"  # clean flip with its interval
    assert parsed.tables["supervised"][0][3] == "at the curve's end"  # the status, in words
    assert parsed.tables["supervised"][0][7] == "light_hair 0.50"  # the worst off-target flip
    assert parsed.tables["supervised"][0][8] == "0.62 [0.25, 1.00] (n 8)"  # MNAC
    assert parsed.tables["supervised"][0][9] == "0.30 (max 0.50 hat; target 2.00)"  # attribute dependency
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "num_samples: 4" in page  # the config
    assert "metrics/pca.json" in page
    # the jacobian and psd spectra are absent: noted, not an error
    assert any("jacobian_spectrum.csv" in note for note in parsed.notes)
    assert any("pullback_psd.csv" in note for note in parsed.notes)


def test_missing_inputs_are_notes_not_errors(tmp_path):
    parsed = _parse(build_report(tmp_path))
    assert parsed.images == []
    for name in ("plots/evaluate_summary.json", "plots/evaluate_methods.csv", "params.yaml", "plots/pca_spectrum.csv"):
        assert any(name in note for note in parsed.notes), name


def test_a_chart_is_a_png_of_the_requested_size():
    png = line_chart({"a": [(0, 1), (1, 2), (2, float("nan"))], "b": [(0, 0)]}, "t", "x", "y", size=(300, 200))
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (300, 200) and image.format == "PNG"
    empty = line_chart({}, "nothing")
    with Image.open(io.BytesIO(empty)) as image:
        assert image.format == "PNG"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_the_page_loads_in_headless_chromium_with_its_images(study, tmp_path_factory):
    target = tmp_path_factory.mktemp("page") / "index.html"
    write_report(target, build_report(study))
    # Each image reports whether it decoded (naturalWidth > 0) into the DOM before it is dumped.
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        "document.title = imgs.length + ':' + imgs.filter(i => i.complete && i.naturalWidth > 0).length; });"
        "</script>"
    )
    target.write_text(target.read_text().replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000", "--dump-dom",
         target.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    title = result.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    total, loaded = (int(value) for value in title.split(":"))
    assert total == 3 + 2 * 3 + 2 + 1 and loaded == total  # grids, clean/broken curves, spectra, few-samples curve


def test_the_edits_of_your_own_images_have_their_section(tmp_path):
    (tmp_path / "plots/edit").mkdir(parents=True)
    Image.new("RGB", (40, 20), "white").save(tmp_path / "plots/edit/grid.png")
    summary = [
        {"direction": "smiling", "scale": 2.0, "images": 4, "broken": 0, "changed_any": 1, "eligible": 3,
         "flipped": 1, "clean_flip": 1},
        {"direction": "smiling", "scale": 4.0, "images": 4, "broken": 1, "changed_any": 2, "eligible": 3,
         "flipped": 2, "clean_flip": 1},
    ]  # fmt: skip
    details = {"directions": {"method": "supervised"}, "inversion": {"method": "edit_friendly", "steps": 20},
               "reconstruction_mse": {"mean": 6.8e-06, "max": 8.0e-06}, "summary": summary}  # fmt: skip
    (tmp_path / "plots/edit/edits.json").write_text(json.dumps(details))
    page = build_report(tmp_path)
    parsed = _parse(page)
    assert [row[:2] for row in parsed.tables["edit"]] == [["smiling", "2"], ["smiling", "4"]]
    assert parsed.tables["edit"][1][2:] == ["4", "2", "1", "3", "2", "1"]
    assert "edit_friendly inversion (20 steps" in page and len(parsed.images) == 1
