"""DVC stage ``edit``: edit ``edit.inputs`` with a directions file into plots/edit/ (grid.png, edits.json,
images/), judging every edit (:func:`pipeline.editing.command.edit_to`; the ``hspace-edit`` command does the same
for files given on its command line)."""

from pathlib import Path

from pipeline.editing.command import edit_to
from pipeline.io.artefacts import EDIT_FOLDER
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps.sections import stage_params

OUTPUT = Path(EDIT_FOLDER)


def main() -> None:
    """DVC stage: edit ``edit.inputs`` as params.yaml says into plots/edit/."""
    params = stage_params("edit")
    with Tracker.of(params) as tracker:
        result = edit_to(params, OUTPUT)
        tracker.image("grid", result.grid, caption=result.caption)
        tracker.table("edits", result.details["summary"])
        tracker.summary({"reconstruction_mse": result.details["reconstruction_mse"]})


if __name__ == "__main__":
    run_main(main)
