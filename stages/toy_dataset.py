"""DVC stage ``toy_dataset``: render a labelled ToyFaces image folder (data/toy_dataset/, cached by DVC), the
default training data of the ``train_classifier`` stage."""

from pipeline.io.errors import run_main
from pipeline.steps import toy_dataset as step
from pipeline.steps.sections import stage_params

IMAGES = "data/toy_dataset/images"
LABELS = "data/toy_dataset/labels.csv"


def main() -> None:
    """Read params.yaml and write the image folder and its label CSV."""
    params = stage_params("toy_dataset")
    step.run(params["toy_dataset"], params["toyfaces"], IMAGES, LABELS)


if __name__ == "__main__":
    run_main(main)
