"""DVC stage ``evaluate`` (one per directions file, a ``foreach`` over ``evaluate.methods``): the file of the method
given on the command line judged on held-out seeds (pipeline/steps/evaluate.py)."""

import sys

from pipeline.classifiers import load_classifier
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Expected, load_directions
from pipeline.directions.methods import directions_path
from pipeline.evaluation.records import EVALUATION_FOLDER, records_path, save_records
from pipeline.io.errors import ConfigError, run_main
from pipeline.io.files import stage_work, write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import LoggingConfig, Tracker
from pipeline.steps import evaluate as step
from pipeline.steps.sections import stage_params

GRID = EVALUATION_FOLDER + "/grid.png"
DETAILS = EVALUATION_FOLDER + "/judge.json"


def main(argv: list[str] | None = None) -> None:
    """``python -m stages.evaluate METHOD``: read params.yaml and the method's directions file; write its labelled
    grid, the judge's details and the per-sample records under plots/evaluate/METHOD/."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise ConfigError("usage: python -m stages.evaluate METHOD (one of evaluate.methods)")
    method = args[0]
    params = stage_params("evaluate")
    model_cfg, sampler, classifier_cfg = params["model"], params["sampler"], params["classifier"]
    cfg = params["evaluate"]
    device = str(resolve_device(params.device))
    world = params["toyfaces"] if classifier_cfg.name == "toyfaces" else None
    with Tracker("evaluate", params.runtime("logging", LoggingConfig), params.tracked) as tracker:
        path = directions_path(method)
        inputs = [model_cfg.source, classifier_cfg.path, path]
        work = stage_work(f"evaluate@{method}", {**params.tracked, "device": device}, inputs)
        model = open_model(model_cfg, device)
        classifier = load_classifier(classifier_cfg, device)
        directions = load_directions(path, Expected(model_id=model_cfg.source, num_steps=sampler.steps))
        result = step.run(model, classifier, method, directions, cfg, sampler, world, work=work)
        save_png(result.grid.picture, GRID.format(method=method))
        tracker.image(f"grid/{method}", result.grid.picture, caption=result.grid.caption)
        write_json(DETAILS.format(method=method), result.details)
        save_records(
            records_path(method), method, result.results, result.baseline, result.names,
            result.factor_names, result.compare,
        )  # fmt: skip
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    run_main(main)
