"""DVC stage ``generate``: sample the configured model into the sharded store data/samples (resumable).

With ``launch.shards > 1`` the shards are sampled by shard jobs (:mod:`pipeline.io.launch`), then merged here.
"""

from omegaconf import DictConfig

from pipeline import study
from pipeline.io.images import make_grid
from pipeline.io.launch import LaunchConfig, ShardJob, run_shard_jobs
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.data.store import open_store
from pipeline.io.tracking import LoggingConfig, Tracker

SAMPLES = "data/samples"
METRICS = "metrics/generate.json"


def main() -> None:
    """Read params.yaml, generate (skipping shards already written), record the store's size."""
    params = load_params()
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    cfg = load_section("generate", study.GenerateConfig, params)
    launch = load_section("launch", LaunchConfig, params)
    device = resolve_device(load_value("device", str, params))
    tracked = {key: params[key] for key in ("model", "sampler", "generate")}
    with Tracker("generate", load_section("logging", LoggingConfig, params), tracked) as tracker:
        if launch.sharded:
            run_shard_jobs("generate", launch)
        model = study.open_model(model_cfg, str(device))
        study.generate(model, model_cfg, sampler, cfg, SAMPLES, sample=not launch.sharded)
        store = open_store(SAMPLES)
        tracker.image("samples", make_grid(store.images(range(min(64, len(store)))), columns=8))
        tracker.metrics(METRICS, {"num_samples": len(store), "h_shape": list(store.h_shape), "steps": sampler.steps})


def run_shard(params: DictConfig, job: ShardJob, device: str) -> None:
    """Shard job ``job``: sample the store shards s with s % count == index (resumable, like the stage)."""
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    cfg = load_section("generate", study.GenerateConfig, params)
    model = study.open_model(model_cfg, str(resolve_device(device)))
    study.generate(model, model_cfg, sampler, cfg, SAMPLES, partition=job.partition)


if __name__ == "__main__":
    main()
