"""DVC stage ``train_toy_model``: train the ToyFaces DDPM; writes models/toyfaces/ddpm (committed)."""

from pipeline.io.files import write_json
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.toyfaces.training import TrainToyModelConfig, train_toy_model
from pipeline.toyfaces.world import ToyFacesConfig

OUTPUT = "models/toyfaces/ddpm"
CHECKPOINTS = "checkpoints/train_toy_model"
METRICS = "metrics/train_toy_model.json"


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the model and its metric."""
    params = load_params()
    world = load_section("toyfaces", ToyFacesConfig, params)
    cfg = load_section("train_toy_model", TrainToyModelConfig, params)
    device = resolve_device(load_value("device", str, params))
    _, metrics = train_toy_model(cfg, world, OUTPUT, CHECKPOINTS, device=device)
    write_json(METRICS, metrics)


if __name__ == "__main__":
    main()
