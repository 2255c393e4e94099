"""DVC stage ``train_toy_classifier``: train the ToyFaces attribute classifier; writes models/toyfaces/classifier
(committed)."""

from pipeline.diffusion.models import resolve_device
from pipeline.io.artefacts import TOY_CLASSIFIER, TRAIN_TOY_CLASSIFIER_METRICS, checkpoint_folder
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import train_toy_classifier as step
from pipeline.steps.sections import stage_params

CHECKPOINTS = checkpoint_folder("train_toy_classifier")


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the classifier and its metrics."""
    params = stage_params("train_toy_classifier")
    device = resolve_device(params.device)
    with Tracker.of(params) as tracker:
        cfg = params["train_toy_classifier"]
        _, metrics = step.run(cfg, params["toyfaces"], TOY_CLASSIFIER, CHECKPOINTS, device=device)
        tracker.metrics(TRAIN_TOY_CLASSIFIER_METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
