"""DVC stage ``train_classifier``: train the ``folder`` labeller's attribute CNN on labelled images (by default
the rendered ToyFaces folder of ``toy_dataset``); writes models/classifier (committed) and its held-out metrics."""

from pipeline.diffusion.models import resolve_device
from pipeline.io.artefacts import FOLDER_CLASSIFIER, TRAIN_CLASSIFIER_METRICS, checkpoint_folder
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import train_classifier as step
from pipeline.steps.sections import stage_params

CHECKPOINTS = checkpoint_folder("train_classifier")


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the classifier and its metrics."""
    params = stage_params("train_classifier")
    with Tracker.of(params) as tracker:
        device = resolve_device(params.device)
        _, metrics = step.run(params["train_classifier"], FOLDER_CLASSIFIER, CHECKPOINTS, device=device)
        tracker.metrics(TRAIN_CLASSIFIER_METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
