"""Suite ``sampling``: throughput of :func:`pipeline.diffusion.sampling.sample` against diffusers'
``DDIMPipeline``, and the peak memory of generate + hstats at two sample counts (each in a fresh subprocess,
:mod:`benchmarks.memory_probe`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMPipeline, DDIMScheduler

from benchmarks.reference import synchronize
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import DecodeSettings, sample
from pipeline.io.errors import ConfigError

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class SamplingBenchConfig:
    """Settings of the ``sampling`` suite.

    Attributes:
        batch_size: images per sampler call (one batch), for every configuration.
        steps: DDIM steps (eta 0).
        repeats: timed calls per configuration, interleaved across configurations; the median is reported.
        warmup: untimed calls per configuration before timing.
        memory_samples: the two (or more) sample counts N whose generate + hstats peak RSS is measured.
        memory_batch_size: sampler batch size of the memory runs; ``memory_shard_size`` samples per shard.
        memory_steps: DDIM steps of the memory runs (h of every step is stored).
        memory_timeout: seconds before a memory subprocess is abandoned.
    """

    batch_size: int = 16
    steps: int = 20
    repeats: int = 5
    warmup: int = 1
    memory_samples: tuple[int, ...] = (256, 2048)
    memory_batch_size: int = 64
    memory_shard_size: int = 64
    memory_steps: int = 20
    memory_timeout: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "repeats", "memory_batch_size", "memory_shard_size", "memory_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"sampling {name} {value!r}: must be a positive integer")
        if self.warmup < 0:
            raise ConfigError(f"sampling warmup {self.warmup!r}: must be >= 0")
        if any(n < 8 for n in self.memory_samples):
            raise ConfigError(f"sampling memory_samples {self.memory_samples!r}: each N must be >= 8")


def ours_sampler(model: DiffusionModel, cfg: SamplingBenchConfig, capture: bool) -> Callable[[], Any]:
    """One call of :func:`pipeline.diffusion.sampling.sample`: seeds 0..batch-1, ``cfg.steps`` DDIM steps (eta 0), one
    batch, h of every step recorded when ``capture``."""
    seeds = list(range(cfg.batch_size))
    steps = "all" if capture else None
    settings = DecodeSettings(steps=cfg.steps, eta=0.0, batch_size=cfg.batch_size)
    return lambda: sample(model, seeds, settings, capture_steps=steps)


def throughput(
    model: DiffusionModel,
    cfg: SamplingBenchConfig,
    fast_model: DiffusionModel | None = None,
    baseline_model: DiffusionModel | None = None,
) -> dict[str, Any]:
    """Images per second of three (or four) samplers on the same model, batch, steps (eta 0) and dtype.

    ``ours_capture``: :func:`pipeline.diffusion.sampling.sample` recording h at every step; ``ours_no_capture``: the
    same without capture; ``diffusers_ddim``: ``DDIMPipeline`` with ``DDIMScheduler.from_config`` of the model's
    scheduler (output_type "np", progress bar off). ``fast_model``, the same weights loaded with performance
    options (autocast, channels_last, compile), adds ``ours_capture_fast``; ``baseline_model``, the same weights
    in another dtype (float32: diffusers' default), adds ``diffusers_ddim_baseline``, DDIMPipeline on it; the
    other three use ``model``. Each
    configuration runs ``warmup`` untimed calls (compilation happens there), then the ``repeats`` timed calls
    are interleaved (A, B, C, A, B, C, ...) so that drifts in machine load hit all alike.

    Returns per configuration the seconds of every call, the median and images/s = batch / median; and the
    ratios of images/s ``ours_capture / diffusers_ddim``, ``ours_no_capture / diffusers_ddim`` and with a
    fast model ``ours_capture_fast / diffusers_ddim`` (> 1: ours is faster); with a baseline model the same
    two ratios (``ratio_capture_vs_baseline``, ``ratio_fast_capture_vs_baseline``) against it.
    """

    def diffusers_run(unet_model: DiffusionModel) -> Callable[[], Any]:
        pipe = DDIMPipeline(unet=unet_model.unet, scheduler=DDIMScheduler.from_config(unet_model.scheduler.config))
        pipe.set_progress_bar_config(disable=True)

        def run() -> Any:
            generator = torch.Generator("cpu").manual_seed(0)
            with torch.no_grad():
                return pipe(
                    batch_size=cfg.batch_size, generator=generator, eta=0.0, num_inference_steps=cfg.steps,
                    output_type="np",
                )  # fmt: skip

        return run

    runs: dict[str, Callable[[], Any]] = {
        "ours_capture": ours_sampler(model, cfg, capture=True),
        "ours_no_capture": ours_sampler(model, cfg, capture=False),
        "diffusers_ddim": diffusers_run(model),
    }
    if baseline_model is not None:
        runs["diffusers_ddim_baseline"] = diffusers_run(baseline_model)
    if fast_model is not None:
        runs["ours_capture_fast"] = ours_sampler(fast_model, cfg, capture=True)
    for run in runs.values():
        for _ in range(cfg.warmup):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(cfg.repeats):
        for name, run in runs.items():
            synchronize(model.device)
            start = time.perf_counter()
            run()
            synchronize(model.device)
            seconds[name].append(time.perf_counter() - start)
    results: dict[str, Any] = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        results[name] = {"seconds": values, "median_seconds": median, "images_per_second": cfg.batch_size / median}
    baseline = results["diffusers_ddim"]["images_per_second"]
    results["ratio_capture_vs_diffusers"] = results["ours_capture"]["images_per_second"] / baseline
    results["ratio_no_capture_vs_diffusers"] = results["ours_no_capture"]["images_per_second"] / baseline
    if fast_model is not None:
        results["ratio_fast_capture_vs_diffusers"] = results["ours_capture_fast"]["images_per_second"] / baseline
    if baseline_model is not None:
        other = results["diffusers_ddim_baseline"]["images_per_second"]
        results["baseline_dtype"] = str(baseline_model.unet.dtype).removeprefix("torch.")
        results["ratio_capture_vs_baseline"] = results["ours_capture"]["images_per_second"] / other
        if fast_model is not None:
            results["ratio_fast_capture_vs_baseline"] = results["ours_capture_fast"]["images_per_second"] / other
    return results


def operator_profile(model: DiffusionModel, cfg: SamplingBenchConfig, top: int) -> dict[str, Any]:
    """Where one :func:`pipeline.diffusion.sampling.sample` call with capture spends its time: ``torch.profiler`` over a
    call of ``cfg.batch_size`` images and ``cfg.steps`` steps (after one untimed call), the ``top`` operators
    (aten::convolution, aten::native_group_norm, ...) by self time on the device (CUDA: the kernels each one
    launched itself) or the CPU.

    Returns ``{"activity": "cuda" | "cpu", "total_ms", "operators": [{"name", "calls", "self_ms", "share"}]}``
    with times in milliseconds summed over the call and ``share`` the fraction of ``total_ms``, the sum of
    every operator's self time (each kernel counted once, under the operator that launched it).
    """
    from torch.profiler import ProfilerActivity, profile

    run = ours_sampler(model, cfg, capture=True)
    run()
    on_cuda = model.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    with profile(activities=activities) as profiler:
        run()
        synchronize(model.device)
    # Kernels appear both as events of their own and in their operator's self device time: operators only.
    events = [event for event in profiler.key_averages() if event.device_type == torch.autograd.DeviceType.CPU]

    def self_us(event: Any) -> float:
        return float(event.self_device_time_total if on_cuda else event.self_cpu_time_total)

    total = sum(self_us(event) for event in events)
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    operators = [
        {"name": event.key, "calls": int(event.count), "self_ms": self_us(event) / 1e3,
         "share": self_us(event) / total if total > 0 else 0.0}
        for event in ranked
    ]  # fmt: skip
    return {"activity": "cuda" if on_cuda else "cpu", "total_ms": total / 1e3, "operators": operators}


def peak_memory(
    model_path: str, device: str, dtype: str, threads: int | None, folder: Path, cfg: SamplingBenchConfig
) -> dict[str, Any]:
    """Peak RSS of generate + hstats for each N of ``cfg.memory_samples``, each in a fresh Python subprocess
    (``python -m benchmarks.memory_probe``) writing its store under ``folder``.

    Returns ``{"runs": [probe output per N], "relative_difference": (peak_last - peak_first) / peak_first}``;
    peaks are in MiB (``resource.getrusage`` high-water mark of the subprocess, imports and model included).
    """
    runs = []
    for count in cfg.memory_samples:
        command = [
            sys.executable,
            "-m",
            "benchmarks.memory_probe",
            "--model", model_path,
            "--device", device,
            "--dtype", dtype,
            "--num-samples", str(count),
            "--folder", str(folder / f"store-{count}"),
            "--steps", str(cfg.memory_steps),
            "--batch-size", str(cfg.memory_batch_size),
            "--shard-size", str(cfg.memory_shard_size),
        ]  # fmt: skip
        if threads is not None:
            command += ["--threads", str(threads)]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
        if threads is not None:
            environment["OMP_NUM_THREADS"] = str(threads)
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            cwd=REPOSITORY,
            timeout=cfg.memory_timeout,
            check=False,
        )
        if completed.returncode != 0:
            tail = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"memory probe N={count} failed with exit code {completed.returncode}: {tail[0]}")
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    first, last = runs[0]["peak_rss_mib"], runs[-1]["peak_rss_mib"]
    return {"runs": runs, "relative_difference": (last - first) / first}


def config_dict(cfg: SamplingBenchConfig) -> dict[str, Any]:
    """The suite's settings as a JSON-ready dict."""
    data = asdict(cfg)
    data["memory_samples"] = list(cfg.memory_samples)
    return data
