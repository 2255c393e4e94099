"""DVC stage ``evaluate``: every directions file scored by one protocol on held-out seeds (pipeline/evaluation/protocol.py)."""

from pipeline import study
from pipeline.io.files import stage_work
from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.directions import Expected, load_directions
from pipeline.evaluation.protocol import EvaluateConfig, evaluate
from pipeline.io.images import save_png
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.toyfaces.world import ToyFacesConfig
from pipeline.io.tracking import LoggingConfig, Tracker

DIRECTIONS = "directions/{method}.safetensors"
GRID = "plots/evaluate/{method}.png"
EFFECTS = "plots/evaluate_effects.csv"
METHODS = "plots/evaluate_methods.csv"
METRICS = "metrics/evaluate.json"


def main() -> None:
    """Read params.yaml and the directions files; write metrics/evaluate.json, two plots and one grid per method."""
    params = load_params()
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    classifier_cfg = load_section("classifier", ClassifierConfig, params)
    cfg = load_section("evaluate", EvaluateConfig, params)
    device = str(resolve_device(load_value("device", str, params)))
    world = load_section("toyfaces", ToyFacesConfig, params) if classifier_cfg.name == "toyfaces" else None
    tracked = {key: params[key] for key in ("model", "sampler", "classifier", "toyfaces", "evaluate")}
    with Tracker("evaluate", load_section("logging", LoggingConfig, params), tracked) as tracker:
        paths = {method: DIRECTIONS.format(method=method) for method in cfg.methods}
        inputs = [model_cfg.source, classifier_cfg.path, *paths.values()]
        work = stage_work("evaluate", {**tracked, "device": device}, inputs)
        model = study.open_model(model_cfg, device)
        classifier = load_classifier(classifier_cfg, device)
        expect = Expected(model_id=model_cfg.source, num_steps=sampler.steps)
        files = {method: load_directions(path, expect) for method, path in paths.items()}
        result = evaluate(model, classifier, files, cfg, sampler, model_cfg.hspace_location, world, work=work)
        for method, picture in result.grids.items():
            save_png(picture, GRID.format(method=method), upscale=2)
            tracker.image(f"grid/{method}", picture, caption=result.captions[method])
        tracker.plot(EFFECTS, result.curve_rows, x="scale", y="target_effect", title="Target/label effect vs scale")
        tracker.plot(METHODS, result.method_rows, x="method", y="mean_selectivity", title="At matched distortion")
        tracker.metrics(METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    main()
