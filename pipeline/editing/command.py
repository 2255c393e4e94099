"""The ``hspace-edit`` command: edit image files with a directions file, judge every edit; and :func:`edit_to`,
the edit step run from params to files, shared with the DVC stage ``edit`` (``stages/edit.py``).

The command edits the files and options given on its command line, with the rest of the settings (model,
classifier, sampler, broken check) from ``params.yaml`` when there is one, else the study's defaults::

    hspace-edit inputs/toyfaces/face_0.png --directions directions/supervised.safetensors --names smiling \\
        --scales 2 4 --out edits/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pipeline.editing.inversions import INVERSIONS
from pipeline.io.errors import ConfigError, run_main
from pipeline.io.images import CROPS, save_png
from pipeline.io.params import DEFAULT_PARAMS, StageParams, load_params

if TYPE_CHECKING:
    from pipeline.steps import edit as step

# The model libraries (diffusers, the steps) are imported inside the functions that use them, so that the command
# parses its arguments, and answers --help, without loading them.


def edit_to(params: StageParams, output: Path, inputs: list[str] | None = None) -> step.EditResult:
    """Run the edit step with ``params`` on ``inputs`` (default: ``edit.inputs``), write its grid, JSON and images
    under ``output`` and print what it did (:func:`print_report`). When some input files could not be read, the
    others are edited and written, then a one-line ConfigError names the skipped files."""
    from pipeline.classifiers import load_judge
    from pipeline.diffusion.models import open_model, resolve_device
    from pipeline.directions import Expected, load_directions, require_directions_file
    from pipeline.io.files import write_json
    from pipeline.steps import edit as step

    model_cfg, cfg = params["model"], params["edit"]
    require_directions_file(cfg.directions)  # before any model loads
    device = str(resolve_device(params.device))
    model = open_model(model_cfg, device)
    classifier = load_judge(params["classifier"], device)
    directions = load_directions(cfg.directions, Expected(model_id=model_cfg.source))
    world = params["toyfaces"] if params["classifier"].name == "toyfaces" else None
    result = step.run(
        model, classifier, directions, cfg, params["sampler"], params["evaluate.broken"], world,
        params["directions.jacobian"], params["directions.pullback"], source=cfg.directions, inputs=inputs,
    )  # fmt: skip
    for name, picture in result.images.items():
        save_png(picture, output / "images" / name)
    save_png(result.grid, output / "grid.png")
    write_json(output / "edits.json", result.details)
    print_report(result, output)
    skipped = [entry["file"] for entry in result.details.get("skipped", [])]
    if skipped:
        total = len(skipped) + len(result.details["images"])
        raise ConfigError(f"{len(skipped)} of {total} inputs could not be edited: {', '.join(skipped)}")
    return result


def print_report(result: step.EditResult, output: Path) -> None:
    """Print the files written and the reconstruction error, one line per input outside what the model draws and
    per skipped file, and per direction and scale the edits that changed attributes (which ones), were broken and
    flipped their target."""
    details = result.details
    mse = details["reconstruction_mse"]
    print(f"wrote {output / 'grid.png'}, {output / 'edits.json'} and {len(result.images)} images under "
          f"{output / 'images'}; reconstruction MSE mean {mse['mean']:.2e}, max {mse['max']:.2e}")  # fmt: skip
    for image in details["images"]:
        if image.get("input_outside_model"):
            print(f"  {image['file']}: its reconstruction already fails the broken check (MSE "
                  f"{image['reconstruction_mse']:.1e}): the input lies outside what the model draws, so 'broken' "
                  "cannot tell an edit's damage there; edits are judged on attribute changes alone")  # fmt: skip
    for entry in details.get("skipped", []):
        print(f"  skipped {entry['file']}: {entry['reason']}")
    for row in details["summary"]:
        changes = ", ".join(f"{name} {count}" for name, count in row["changed_by_attribute"].items())
        outside = f" (not judged on {row['outside']} outside the model)" if "outside" in row else ""
        flips = ""
        if "flipped" in row:
            flips = f", target flipped {row['flipped']}/{row['eligible']} (clean {row['clean_flip']})"
        print(f"  {row['direction']} {row['scale']:+g}: changed {row['changed_any']}/{row['images']}"
              f"{f' ({changes})' if changes else ''}, broken {row['broken']}{outside}{flips}")  # fmt: skip


def default_params() -> DictConfig:
    """The study's defaults for every section the edit step reads (what params.yaml holds on a fresh clone)."""
    from pipeline.steps import edit as step
    from pipeline.steps.sections import SECTIONS

    params = OmegaConf.create({"device": "auto"})
    for key in (*step.PARAMS, "logging"):
        section = key if key in SECTIONS else key.rpartition(".")[0]
        OmegaConf.update(params, section, OmegaConf.structured(SECTIONS[section]), force_add=True)
    return params


def cli(argv: list[str] | None = None) -> None:
    """``hspace-edit``: edit image files with a directions file; see ``hspace-edit --help``."""
    parser = argparse.ArgumentParser(
        prog="hspace-edit",
        description="Invert images with the study's diffusion model, edit them with a directions file at several "
        "scales, and write the edited images, a labelled grid and a JSON of every edit's attribute changes "
        "(classifier decisions and broken check, against the unedited reconstruction).",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--directions", help="directions file (default: edit.directions of the params)")
    parser.add_argument("--names", nargs="+", help="directions to apply (file names; k0.. for jacobian, v0.. for "
                        "pullback); default: edit.names")  # fmt: skip
    parser.add_argument("--scales", nargs="+", type=float, help="scales in the file's unit; default: edit.scales")
    parser.add_argument("--inversion", choices=INVERSIONS, help="default: edit.inversion (edit_friendly)")
    parser.add_argument("--crop", choices=CROPS, help="fit another aspect ratio by a centre crop (default: refuse)")
    parser.add_argument("--out", default="edits", help="output folder (default: edits)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file for the model, classifier and sampler (default: params.yaml if present, "
                        "else the study's defaults)")  # fmt: skip
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the params' device)")
    args = parser.parse_args(argv)
    params = load_params(args.params) if Path(args.params).is_file() else default_params()
    overrides: dict[str, Any] = {"directions": args.directions, "names": args.names, "scales": args.scales,
                                 "inversion": args.inversion, "crop": args.crop}  # fmt: skip
    for key, value in overrides.items():
        if value is not None:
            OmegaConf.update(params, f"edit.{key}", value, force_add=True)
    if args.device is not None:
        params.device = args.device
    from pipeline.steps.sections import stage_params

    edit_to(stage_params("edit", params), Path(args.out), args.inputs)


def console() -> None:
    """Entry point of the ``hspace-edit`` console script (one-line errors, like the stages)."""
    run_main(cli)
