"""DVC stage ``toy_dataset``: render a labelled ToyFaces image folder (data/toy_dataset/, cached by DVC), the
default training data of the ``train_classifier`` stage."""

import csv

from pipeline.io.artefacts import TOY_DATASET_IMAGES, TOY_DATASET_LABELS
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import toy_dataset as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml and write the image folder and its label CSV."""
    params = stage_params("toy_dataset")
    with Tracker.of(params) as tracker:
        step.run(params["toy_dataset"], params["toyfaces"], TOY_DATASET_IMAGES, TOY_DATASET_LABELS)
        with open(TOY_DATASET_LABELS, newline="") as file:
            rows = list(csv.DictReader(file))
        names = [name for name in rows[0] if name != "file"]
        frequency = {name: sum(row[name] == "1" for row in rows) / len(rows) for name in names}
        tracker.summary({"images": len(rows), "frequency": frequency})


if __name__ == "__main__":
    run_main(main)
