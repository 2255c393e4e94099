"""DVC stage ``train_toy_model``: train the ToyFaces DDPM; writes models/toyfaces/ddpm (committed)."""

from pipeline.diffusion.models import resolve_device
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import train_toy_model as step
from pipeline.steps.sections import stage_params

OUTPUT = "models/toyfaces/ddpm"
CHECKPOINTS = "checkpoints/train_toy_model"
METRICS = "metrics/train_toy_model.json"


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the model and its metrics."""
    params = stage_params("train_toy_model")
    device = resolve_device(params.device)
    with Tracker.of(params) as tracker:
        _, metrics = step.run(params["train_toy_model"], params["toyfaces"], OUTPUT, CHECKPOINTS, device=device)
        tracker.metrics(METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
