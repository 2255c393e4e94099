"""DVC stage ``evaluate`` (one per directions file, a ``foreach`` over ``evaluate.methods``): the file of the method
given on the command line judged on held-out seeds (pipeline/steps/evaluate.py).

With ``launch.shards = n > 1`` shard jobs (:mod:`pipeline.io.launch`) first decode the edits of the directions
k with k % n == i into the stage's work folder; the stage then judges the whole file, loading every decode from
that folder, so its outputs are those of an unsharded run.
"""

import sys

import torch
from omegaconf import DictConfig

from pipeline.classifiers import load_judge
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Directions, Expected, load_directions
from pipeline.evaluation.records import save_records
from pipeline.io.artefacts import directions_path, evaluation_details, evaluation_grid, records_path
from pipeline.io.errors import ConfigError, run_main
from pipeline.io.files import WorkCache, stage_work, write_json
from pipeline.io.images import save_png
from pipeline.io.launch import LaunchConfig, ShardJob, run_shard_jobs
from pipeline.io.params import StageParams
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
    launch = params.runtime("launch", LaunchConfig)
    device = resolve_device(params.device)
    with Tracker.of(params, f"evaluate@{method}") as tracker:
        work = work_cache(params, method, device)  # stamped before any shard job joins it
        directions = _directions(params, method)  # a bad file fails here, before any job starts
        if launch.sharded:
            run_shard_jobs("evaluate", launch, method)
        result = _judge(params, method, directions, device, work)
        assert result is not None, "no shard: the whole file is judged"
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


def run_shard(raw: DictConfig, job: ShardJob, device: str) -> None:
    """Shard job ``job``: decode the edits of the directions k with k % count == index of ``evaluate@<job.method>``
    into the stage's work folder (decodes already there are kept, so a rerun resumes); the judgements are left to
    the stage, which makes them from every job's decodes."""
    assert job.method is not None, "check_job_config gives evaluate jobs a method"
    params = stage_params("evaluate", raw)
    resolved = resolve_device(device)
    work = work_cache(params, job.method, resolved, join=True)
    _judge(params, job.method, _directions(params, job.method), resolved, work, job.partition)


def work_cache(params: StageParams, method: str, device: torch.device, join: bool = False) -> WorkCache:
    """The work folder of ``evaluate@<method>``, shared by the stage and its shard jobs (``join``: a job's).

    Its fingerprint holds the device *type*, not the device: jobs on cuda:0, cuda:1, ... (:func:`job_device`)
    decode with the kernels of the stage's cuda, so their units are the stage's, while CPU and CUDA decodes differ
    in rounding and must never mix (a job whose type differs from the stage's is refused by ``join``)."""
    inputs = [params["model"].source, params["classifier"].path, directions_path(method)]
    return stage_work(f"evaluate@{method}", {**params.tracked, "device": device.type}, inputs, join)


def _directions(params: StageParams, method: str) -> Directions:
    """The directions file of ``method``, checked against the model and sampler."""
    expected = Expected(model_id=params["model"].source, num_steps=params["sampler"].steps)
    return load_directions(directions_path(method), expected)


def _judge(
    params: StageParams,
    method: str,
    directions: Directions,
    device: torch.device,
    work: WorkCache,
    shard: tuple[int, int] | None = None,
) -> step.MethodEvaluation | None:
    """:func:`pipeline.steps.evaluate.run` of ``directions`` on ``device`` (None for a shard job)."""
    classifier_cfg = params["classifier"]
    world = params["toyfaces"] if classifier_cfg.name == "toyfaces" else None
    model = open_model(params["model"], str(device))
    classifier = load_judge(classifier_cfg, str(device))
    cfg, sampler = params["evaluate"], params["sampler"]
    return step.run(model, classifier, method, directions, cfg, sampler, world, work=work, shard=shard)


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
