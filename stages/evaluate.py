"""DVC stage ``evaluate``: every directions file judged by one protocol on held-out seeds
(pipeline/steps/evaluate.py)."""

from pipeline.classifiers import load_classifier
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Expected, load_directions
from pipeline.directions.methods import directions_path
from pipeline.io.files import stage_work, write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import LoggingConfig, Tracker
from pipeline.steps import evaluate as step
from pipeline.steps.sections import stage_params

GRID = "plots/evaluate/{method}.png"
DETAILS = "plots/evaluate/judge.json"
CURVES = "plots/evaluate_curves.csv"
METHODS = "plots/evaluate_methods.csv"
METRICS = "metrics/evaluate.json"


def main() -> None:
    """Read params.yaml and the directions files; write metrics/evaluate.json (the summary), the details, two
    plots and one labelled grid per method."""
    params = stage_params("evaluate")
    model_cfg, sampler, classifier_cfg = params["model"], params["sampler"], params["classifier"]
    cfg = params["evaluate"]
    device = str(resolve_device(params.device))
    world = params["toyfaces"] if classifier_cfg.name == "toyfaces" else None
    with Tracker("evaluate", params.runtime("logging", LoggingConfig), params.tracked) as tracker:
        paths = {method: directions_path(method) for method in cfg.methods}
        inputs = [model_cfg.source, classifier_cfg.path, *paths.values()]
        work = stage_work("evaluate", {**params.tracked, "device": device}, inputs)
        model = open_model(model_cfg, device)
        classifier = load_classifier(classifier_cfg, device)
        expect = Expected(model_id=model_cfg.source, num_steps=sampler.steps)
        files = {method: load_directions(path, expect) for method, path in paths.items()}
        result = step.run(model, classifier, files, cfg, sampler, world, work=work)
        for method, picture in result.grids.items():
            save_png(picture, GRID.format(method=method))
            tracker.image(f"grid/{method}", picture, caption=result.captions[method])
        write_json(DETAILS, result.details)
        tracker.plot(CURVES, result.curve_rows, x="scale", y="clean_flip", title="Clean flip vs signed scale")
        tracker.plot(METHODS, result.method_rows, x="method", y="mean_clean_flip", title="At operating scales")
        tracker.metrics(METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    main()
