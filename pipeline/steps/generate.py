"""Step ``generate``: sample seeds of the configured model into the sharded samples store (resumable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.data.store import StoreIndex, StoreSpec
from pipeline.data.store_writing import generate_store
from pipeline.diffusion.models import DiffusionModel, ModelConfig
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "generate")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class GenerateConfig:
    """The ``generate`` params section: which samples define the statistics, and how they are stored."""

    num_samples: int = 1024
    seed_offset: int = 0
    shard_size: int = 64
    h_dtype: str = "float16"
    store_noise: bool = True

    def __post_init__(self) -> None:
        require(self.num_samples >= 2, "generate.num_samples", self.num_samples, "must be >= 2")
        require(self.seed_offset >= 0, "generate.seed_offset", self.seed_offset, "must be >= 0")
        require(self.shard_size >= 1, "generate.shard_size", self.shard_size, "must be >= 1")


def run(
    model: DiffusionModel,
    model_cfg: ModelConfig,
    sampler: SamplerConfig,
    cfg: GenerateConfig,
    folder: str | Path,
    progress: bool = True,
    partition: tuple[int, int] | None = None,
    sample: bool = True,
) -> StoreIndex:
    """Sample seeds ``seed_offset .. seed_offset + num_samples - 1`` into a sharded store at ``folder``.

    Resumable: shards already written for the same settings are kept. ``partition`` (i, n): only the shards
    s with s % n == i (one of n shard jobs); ``sample=False``: the merge after the jobs, which checks that
    every shard is there and writes the index (see :func:`pipeline.data.store_writing.generate_store`).
    """
    spec = StoreSpec(
        steps=sampler.steps,
        eta=sampler.eta,
        hspace_location=model_cfg.hspace_location,
        h_dtype=cfg.h_dtype,
        store_noise=cfg.store_noise,
    )
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.num_samples)
    return generate_store(
        model, folder, seeds, spec, shard_size=cfg.shard_size, batch_size=sampler.batch_size, progress=progress,
        partition=partition, sample=sample,
    )  # fmt: skip

