"""DVC stage ``train_toy_classifier``: train the ToyFaces attribute classifier; writes models/toyfaces/classifier."""

from pipeline.io.files import write_json
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.toyfaces.training import TrainToyClassifierConfig, train_toy_classifier
from pipeline.toyfaces.world import ToyFacesConfig

OUTPUT = "models/toyfaces/classifier"
CHECKPOINTS = "checkpoints/train_toy_classifier"
METRICS = "metrics/train_toy_classifier.json"


def main() -> None:
    """Read params.yaml, train (resuming from CHECKPOINTS if present), write the classifier and held-out accuracy."""
    params = load_params()
    world = load_section("toyfaces", ToyFacesConfig, params)
    cfg = load_section("train_toy_classifier", TrainToyClassifierConfig, params)
    device = resolve_device(load_value("device", str, params))
    _, metrics = train_toy_classifier(cfg, world, OUTPUT, CHECKPOINTS, device=device)
    write_json(METRICS, metrics)


if __name__ == "__main__":
    main()
