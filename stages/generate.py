"""DVC stage ``generate``: sample the configured model into the sharded store data/samples (resumable).

With ``launch.shards > 1`` the shards are sampled by shard jobs (:mod:`pipeline.io.launch`), then merged here.
"""

from omegaconf import DictConfig

from pipeline.data.store import open_store
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.io.artefacts import GENERATE_METRICS, SAMPLES
from pipeline.io.errors import run_main
from pipeline.io.images import make_grid
from pipeline.io.launch import LaunchConfig, ShardJob, run_shard_jobs
from pipeline.io.tracking import Tracker
from pipeline.steps import generate as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml, generate (skipping shards already written), record the store's size."""
    params = stage_params("generate")
    model_cfg, sampler, cfg = params["model"], params["sampler"], params["generate"]
    launch = params.runtime("launch", LaunchConfig)
    with Tracker.of(params) as tracker:
        if launch.sharded:
            run_shard_jobs("generate", launch)
        model = open_model(model_cfg, str(resolve_device(params.device)))
        step.run(model, model_cfg, sampler, cfg, SAMPLES, sample=not launch.sharded)
        store = open_store(SAMPLES)
        tracker.image("samples", make_grid(store.images(range(min(64, len(store)))), columns=8))
        metrics = {"num_samples": len(store), "h_shape": list(store.h_shape), "steps": sampler.steps}
        tracker.metrics(GENERATE_METRICS, metrics)


def run_shard(raw: DictConfig, job: ShardJob, device: str) -> None:
    """Shard job ``job``: sample the store shards s with s % count == index (resumable, like the stage)."""
    params = stage_params("generate", raw)
    model = open_model(params["model"], str(resolve_device(device)))
    step.run(model, params["model"], params["sampler"], params["generate"], SAMPLES, partition=job.partition)


if __name__ == "__main__":
    run_main(main)
