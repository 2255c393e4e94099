"""params.yaml: composed from conf/, validated against the stage schemas with one-line errors."""

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.io.errors import ConfigError, run_main
from pipeline.io.params import CONF_COMMAND, compose, load_params, load_section, load_value, schema_fields
from pipeline.io.params import main as params_main
from pipeline.steps.sections import CONF_NOTES, SECTIONS, conf_files
from pipeline.toyfaces.world import ToyFacesConfig

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_VALUES = {"device"}
"""Top-level params that are plain values, not sections."""


def _nested(key: str, value: object) -> dict:
    """``{"a": {"b": value}}`` for the dotted key "a.b"."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value  # type: ignore[return-value]


def test_every_composed_section_has_a_schema():
    """No section of params.yaml escapes validation (a nested section counts through its subsections)."""
    params = OmegaConf.to_container(load_params(ROOT / "params.yaml"))
    covered = {key.split(".")[0] for key in SECTIONS}
    assert set(params) - RUNTIME_VALUES == covered
    for key in SECTIONS:
        parent, _, _ = key.rpartition(".")
        if parent:
            assert set(params[parent]) == {k.rpartition(".")[2] for k in SECTIONS if k.startswith(parent + ".")}


def test_committed_params_equal_what_conf_composes():
    committed = (ROOT / "params.yaml").read_text()
    assert compose(ROOT / "conf") == committed, "params.yaml is stale: run `python -m pipeline.io.params`"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_committed_section_validates(section):
    params = load_params(ROOT / "params.yaml")
    assert isinstance(load_section(section, SECTIONS[section], params), SECTIONS[section])


GROUP_OPTIONS = sorted(
    (path.parent.name, path.stem) for path in (ROOT / "conf").glob("*/*.yaml") if path.parent.name in SECTIONS
)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_config_group_option_composes_and_validates(group, option, tmp_path):
    """Each documented alternative (``-S model=sd15``, ``-S classifier=celeba_attributes``...) is a valid section."""
    (tmp_path / "params.yaml").write_text(compose(ROOT / "conf", overrides=[f"{group}={option}"]))
    assert isinstance(load_section(group, SECTIONS[group], load_params(tmp_path / "params.yaml")), SECTIONS[group])


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_conf_values_are_the_schema_defaults(section):
    """The library's defaults (used from notebooks) and the pipeline's conf/ agree, for every section."""
    schema = SECTIONS[section]
    assert load_section(section, schema, load_params(ROOT / "params.yaml")) == schema()


def test_generated_conf_files_are_up_to_date():
    """Each group's default option is generated from the dataclasses, never edited by hand."""
    stale = [path.relative_to(ROOT).as_posix() for path, text in conf_files(ROOT / "conf").items()
             if not path.is_file() or path.read_text() != text]  # fmt: skip
    assert not stale, f"{', '.join(stale)} out of date: run `{CONF_COMMAND}`"


@pytest.mark.parametrize("key", sorted(CONF_NOTES))
def test_every_conf_note_names_a_params_key(key):
    """A renamed or removed field cannot keep a comment in CONF_NOTES."""
    section = next((name for name in SECTIONS if key == name or key.startswith(name + ".")), None)
    if section is None:  # a group of subsections ("directions")
        assert any(name.startswith(key + ".") for name in SECTIONS), f"CONF_NOTES: {key}: no such section"
        return
    path = key[len(section) + 1 :].split(".") if key != section else []
    assert not path or path[-1] in schema_fields(SECTIONS[section], path[:-1]), f"CONF_NOTES: {key}: no such field"


DEFAULT_OPTIONS = {
    group: option
    for entry in OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml"))["defaults"]
    if isinstance(entry, dict)
    for group, option in entry.items()
}
OTHER_OPTIONS = [(group, option) for group, option in GROUP_OPTIONS if DEFAULT_OPTIONS.get(group) != option]


@pytest.mark.parametrize(("group", "option"), OTHER_OPTIONS)
def test_other_group_options_extend_the_default_and_state_only_what_differs(group, option):
    """``conf/<group>/<option>.yaml`` composes onto the generated default option and restates none of its values."""
    stated = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml"))
    assert stated.pop("defaults", None) == [DEFAULT_OPTIONS[group], "_self_"]
    default = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{DEFAULT_OPTIONS[group]}.yaml"))
    restated = [key for key, value in stated.items() if key in default and default[key] == value]
    assert not restated, f"conf/{group}/{option}.yaml restates the defaults of {restated}"


@pytest.mark.parametrize(
    ("section", "override", "key"),
    [
        ("train_toy_model", {"stepz": 3}, "train_toy_model.stepz"),
        ("train_toy_model", {"optim": {"lr": "fast"}}, "train_toy_model.optim.lr"),
        ("toyfaces", {"probabilities": {"smiling": "often"}}, "toyfaces.probabilities.smiling"),
        ("toy_quality", {"num_samples": [1, 2]}, "toy_quality.num_samples"),
        ("sampler", {"eta": 1.5}, "sampler.eta"),
        ("sampler", {"injection": "both"}, "sampler.injection"),
        ("directions.pca", {"n_components": 0}, "directions.pca.n_components"),
        ("hstats", {"top_k": -1}, "hstats.top_k"),
        ("directions.supervised", {"groups": "top"}, "directions.supervised.groups"),
        ("preview", {"scales": []}, "preview.scales"),
        ("preview", {"methods": ["pca"]}, "preview.methods"),
        ("preview", {"methods": []}, "preview.methods"),
        ("preview", {"methods": ["supervised", "supervised"]}, "preview.methods"),
        ("generate", {"num_samples": 1}, "generate.num_samples"),
        ("model", {"text": {"guidance_scale": -2.0}}, "model.text.guidance_scale"),
        ("model", {"text": {"promt": "a face"}}, "model.text.promt"),
    ],
)
def test_unknown_key_wrong_type_or_range_is_one_line_naming_the_key(section, override, key):
    params = OmegaConf.merge(load_params(ROOT / "params.yaml"), _nested(section, override))
    with pytest.raises(ConfigError) as error:
        load_section(section, SECTIONS[section], params)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_missing_file_section_and_value_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("device: 3\n")
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match="section 'toyfaces' is missing"):
        load_section("toyfaces", ToyFacesConfig, params)
    with pytest.raises(ConfigError, match="device=3: expected str"):
        load_value("device", str, params)
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "broken.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generate.num_samples=-1", "error: params: generate.num_samples=-1: must be >= 2"),
        ("directions.pca.n_componets=4",
         "error: params: directions.pca.n_componets: unknown key; did you mean 'n_components'?"),
    ],
)  # fmt: skip
def test_composer_refuses_a_bad_setting_before_writing(
    override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``python -m pipeline.io.params`` validates the composed params as the stages do: a value out of range (or
    an unknown key) stops it with one line, exit status 1, and the output file keeps its bytes."""
    out = tmp_path / "params.yaml"
    out.write_bytes((ROOT / "params.yaml").read_bytes())
    before = out.read_bytes()
    monkeypatch.delenv("HSPACE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["pipeline.io.params", override, "--conf-dir", str(ROOT / "conf"),
                                      "--out", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_main(params_main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [message]
    assert out.read_bytes() == before


def test_composer_writes_valid_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "params.yaml"
    monkeypatch.setattr(sys, "argv", ["pipeline.io.params", "generate.num_samples=64", "--conf-dir",
                                      str(ROOT / "conf"), "--out", str(out)])  # fmt: skip
    params_main()
    assert load_params(out).generate.num_samples == 64
