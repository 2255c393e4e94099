"""DVC stage ``train_toy_classifier``: train the ToyFaces attribute classifier; writes models/toyfaces/classifier
(committed)."""

from pipeline.diffusion.models import resolve_device
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import train_toy_classifier as step
from pipeline.steps.sections import stage_params

OUTPUT = "models/toyfaces/classifier"
CHECKPOINTS = "checkpoints/train_toy_classifier"
METRICS = "metrics/train_toy_classifier.json"


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the classifier and its metrics."""
    params = stage_params("train_toy_classifier")
    device = resolve_device(params.device)
    with Tracker.of(params) as tracker:
        _, metrics = step.run(params["train_toy_classifier"], params["toyfaces"], OUTPUT, CHECKPOINTS, device=device)
        tracker.metrics(METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
