"""One memory measurement, meant to run in a fresh process: generate N samples into a store, then hstats.

``python -m benchmarks.memory_probe --model PATH --num-samples N --folder DIR`` prints one JSON line with the
peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, MiB) after loading the model and at the
end, and the seconds each part took. Labels are random scores: two attributes, each a random permutation of
(i + 0.5) / N (seed 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch

from pipeline.data.store import open_store
from pipeline.diffusion.models import ModelConfig, load_model
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.io.errors import ConfigError
from pipeline.steps import generate, hstats
from pipeline.steps.generate import GenerateConfig
from pipeline.steps.hstats import HStatsConfig

ATTRIBUTES = ("attribute_a", "attribute_b")


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def probe_top_k(num_samples: int) -> int:
    """The hstats top_k of a memory probe on ``num_samples`` samples: the default k, capped at N / 4 so that
    the top and bottom groups of a small store never overlap (memory does not depend on k)."""
    return max(1, min(HStatsConfig.top_k, num_samples // 4))


def probe(
    model_path: str,
    num_samples: int,
    folder: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    steps: int = 20,
    batch_size: int = 64,
    shard_size: int = 64,
) -> dict[str, Any]:
    """Generate ``num_samples`` samples (DDIM, ``steps`` steps, eta 0, h of every step as float16) into a store
    at ``folder`` with :func:`pipeline.steps.generate.run`, then :func:`pipeline.steps.hstats.run` with random labels.

    Returns num_samples, rss_after_load_mib, peak_rss_mib (MiB), generate_seconds, hstats_seconds and, on CUDA,
    cuda_peak_allocated_mib.
    """
    if num_samples < 8:
        raise ConfigError(f"num_samples {num_samples!r}: must be >= 8 (top-k groups need samples on both sides)")
    model_cfg = ModelConfig(source=model_path, dtype=dtype)
    model = load_model(model_path, device=device, dtype=dtype, clip_sample=model_cfg.clip_sample)
    after_load = peak_rss_mib()
    start = time.perf_counter()
    generate.run(
        model,
        model_cfg,
        SamplerConfig(steps=steps, eta=0.0, batch_size=batch_size),
        GenerateConfig(num_samples=num_samples, shard_size=shard_size),
        folder,
        progress=False,
    )
    generated = time.perf_counter()
    store = open_store(folder)
    generator = torch.Generator("cpu").manual_seed(0)
    ranks = torch.stack([torch.randperm(len(store), generator=generator) for _ in ATTRIBUTES], dim=1)
    scores = (ranks.float() + 0.5) / len(store)  # random order, both sides of 0.5 always populated
    cfg = HStatsConfig(top_k=probe_top_k(num_samples), batch_size=batch_size)
    hstats.run(store, ATTRIBUTES, scores, cfg, progress=False)
    finished = time.perf_counter()
    result = {
        "num_samples": num_samples,
        "rss_after_load_mib": after_load,
        "peak_rss_mib": peak_rss_mib(),
        "generate_seconds": generated - start,
        "hstats_seconds": finished - generated,
    }
    if model.device.type == "cuda":
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: parse arguments, run :func:`probe`, print its result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    diffusers.logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = probe(
        args.model,
        args.num_samples,
        args.folder,
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
