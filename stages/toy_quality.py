"""DVC stage ``toy_quality``: judge the trained ToyFaces DDPM with the ToyFaces classifier."""

from pipeline.io.files import write_json
from pipeline.io.images import save_png
from pipeline.diffusion.models import load_model, resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.toyfaces.classifier import ToyFacesClassifier
from pipeline.toyfaces.quality import ToyQualityConfig, assess_toy_model
from pipeline.toyfaces.world import ToyFacesConfig

MODEL = "models/toyfaces/ddpm"
CLASSIFIER = "models/toyfaces/classifier"
METRICS = "metrics/toy_quality.json"
GRID = "plots/toy_quality_samples.png"


def main() -> None:
    """Sample, classify, and write metrics/toy_quality.json and a generated-vs-real grid."""
    params = load_params()
    world = load_section("toyfaces", ToyFacesConfig, params)
    cfg = load_section("toy_quality", ToyQualityConfig, params)
    device = resolve_device(load_value("device", str, params))
    model = load_model(MODEL, device=str(device), clip_sample=cfg.clip_sample)
    classifier = ToyFacesClassifier.load(CLASSIFIER, device=device)
    metrics, picture = assess_toy_model(model, classifier, world, cfg)
    write_json(METRICS, metrics)
    save_png(picture, GRID, upscale=3)


if __name__ == "__main__":
    main()
