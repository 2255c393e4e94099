"""DVC stage ``toy_quality``: judge the trained ToyFaces DDPM with the ToyFaces classifier."""

from pipeline.diffusion.models import load_model, resolve_device
from pipeline.io.errors import run_main
from pipeline.io.files import write_json
from pipeline.io.images import save_png
from pipeline.steps import toy_quality as step
from pipeline.steps.sections import stage_params
from pipeline.toyfaces.classifier import ToyFacesClassifier

MODEL = "models/toyfaces/ddpm"
CLASSIFIER = "models/toyfaces/classifier"
METRICS = "metrics/toy_quality.json"
GRID = "plots/toy_quality_samples.png"


def main() -> None:
    """Sample, classify, and write metrics/toy_quality.json and a generated-vs-real grid."""
    params = stage_params("toy_quality")
    cfg = params["toy_quality"]
    device = resolve_device(params.device)
    model = load_model(MODEL, device=str(device), clip_sample=cfg.clip_sample)
    classifier = ToyFacesClassifier.load(CLASSIFIER, device=device)
    metrics, picture = step.run(model, classifier, params["toyfaces"], cfg)
    write_json(METRICS, metrics)
    save_png(picture, GRID)


if __name__ == "__main__":
    run_main(main)
