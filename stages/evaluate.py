"""DVC stage ``evaluate`` (one per directions file, a ``foreach`` over ``evaluate.methods``): the file of the method
given on the command line judged on held-out seeds (pipeline/steps/evaluate.py)."""

import sys

from pipeline.classifiers import load_judge
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Expected, load_directions
from pipeline.evaluation.records import save_records
from pipeline.io.artefacts import directions_path, evaluation_details, evaluation_grid, records_path
from pipeline.io.errors import ConfigError, run_main
from pipeline.io.files import stage_work, write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import Tracker
from pipeline.steps import evaluate as step
from pipeline.steps.sections import stage_params


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
    with Tracker.of(params, f"evaluate@{method}") as tracker:
        path = directions_path(method)
        inputs = [model_cfg.source, classifier_cfg.path, path]
        work = stage_work(f"evaluate@{method}", {**params.tracked, "device": device}, inputs)
        model = open_model(model_cfg, device)
        classifier = load_judge(classifier_cfg, device)
        directions = load_directions(path, Expected(model_id=model_cfg.source, num_steps=sampler.steps))
        result = step.run(model, classifier, method, directions, cfg, sampler, world, work=work)
        save_png(result.grid.picture, evaluation_grid(method))
        tracker.image("grid", result.grid.picture, caption=result.grid.caption)
        write_json(evaluation_details(method), result.details)
        _log_judged(tracker, result)
        save_records(
            records_path(method), method, result.results, result.baseline, result.names,
            result.factor_names, result.compare,
        )  # fmt: skip
        tracker.timings(result.timings)
        work.clear()


def _log_judged(tracker: Tracker, result: step.MethodEvaluation) -> None:
    """W&B: the judge's entry of every (direction, side) as a table, each direction's clean-flip curve against the
    signed scale as a line, and the method's key figures at the operating scales as the run summary."""
    sides = [(entry["name"], side, values) for entry in result.details["directions"]
             for side, values in entry["sides"].items()]  # fmt: skip
    judged = [{"direction": name, "side": side, **{k: v for k, v in values.items() if k != "curve"}}
              for name, side, values in sides]  # fmt: skip
    tracker.table("judge", judged)
    sign = {(name, side): result.results[name].sides[side].edits.sign for name, side, _ in sides}
    curves = [{"direction": name, "side": side, **point, "scale": sign[name, side] * point["scale"]}
              for name, side, values in sides for point in values["curve"]]  # fmt: skip
    tracker.table("curves", curves)
    tracker.lines("clean_flip", curves, x="scale", y="clean_flip", series=("direction",), title="Clean flip")
    clean = [values["clean_flip"]["rate"] for _, _, values in sides if values["clean_flip"]["rate"] is not None]
    broken = [values["broken"]["rate"] for _, _, values in sides if values["broken"]["rate"] is not None]
    tracker.summary({
        "directions": len(result.results),
        "mean_clean_flip": sum(clean) / len(clean) if clean else None,
        "min_clean_flip": min(clean, default=None),
        "mean_broken": sum(broken) / len(broken) if broken else None,
        "infeasible": sum(not values["feasible"] for _, _, values in sides),
    })  # fmt: skip


if __name__ == "__main__":
    run_main(main)
