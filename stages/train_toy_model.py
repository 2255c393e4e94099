"""DVC stage ``train_toy_model``: train the ToyFaces DDPM; writes models/toyfaces/ddpm (committed)."""

from pipeline.diffusion.models import resolve_device
from pipeline.io.artefacts import TOY_MODEL, TRAIN_TOY_MODEL_METRICS, checkpoint_folder
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import train_toy_model as step
from pipeline.steps.sections import stage_params

CHECKPOINTS = checkpoint_folder("train_toy_model")


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the model and its metrics."""
    params = stage_params("train_toy_model")
    device = resolve_device(params.device)
    with Tracker.of(params) as tracker:
        _, metrics = step.run(params["train_toy_model"], params["toyfaces"], TOY_MODEL, CHECKPOINTS, device=device)
        tracker.metrics(TRAIN_TOY_MODEL_METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
