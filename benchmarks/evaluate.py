"""Suite ``evaluate``: edits of held-out samples that reuse the unedited steps, against the full decode.

    python -m benchmarks.evaluate [--model models/toyfaces/ddpm] [--directions directions/supervised.safetensors]
        [--samples 32] [--count 2] [--repeats 2] [--warmup 1] [--threads N] [--device auto] [--json out.json]

The evaluate stage's edits: :class:`pipeline.editing.samples.Editor` decodes the first ``--count`` directions of
the file at the evaluate section's scales (``evaluate.scales``, or its ``method_scales`` for the file's method) on
``--samples`` held-out seeds from ``evaluate.seed_offset``, with the ``sampler`` section of params.yaml. One run
is a fresh editor decoding every direction, so the reuse side pays for its unedited states once per run, as a
stage does. ``full`` is ``reuse_unedited_steps=False`` (every step from x_T), ``reuse`` the default; after
``--warmup`` untimed runs of each, ``--repeats`` rounds time them interleaved (full, reuse, full, reuse, ...) so
that drifts in machine load hit both alike. Reports the median seconds per edited image of each, the ratio
full / reuse (> 1: reuse is faster), the largest pixel difference between their images (in [0, 1] units) and
each direction's first edited step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.reference import synchronize
from benchmarks.run import environment
from pipeline.diffusion.models import DiffusionModel, open_model, resolve_device
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions import Directions, Expected, load_directions
from pipeline.editing.samples import Editor, HeldOut, first_edited_step, held_out
from pipeline.io.errors import ConfigError, PipelineError
from pipeline.io.files import write_json
from pipeline.steps.sections import stage_params

DEFAULT_DIRECTIONS = "directions/supervised.safetensors"
CONFIGURATIONS = {"full": False, "reuse": True}
"""Name -> ``reuse_unedited_steps`` of the editor."""


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (every option with its default)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers pipeline folder (default: params model.source)")
    parser.add_argument("--directions", default=DEFAULT_DIRECTIONS, help=f"directions file ({DEFAULT_DIRECTIONS})")
    parser.add_argument("--samples", type=int, default=32, help="held-out seeds edited (default 32)")
    parser.add_argument("--count", type=int, default=2, help="first directions of the file edited (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each configuration (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default auto)")
    parser.add_argument("--json", type=Path, default=None, help="write the report to this JSON file")
    return parser


def edit_all(
    model: DiffusionModel,
    directions: Directions,
    samples: HeldOut,
    sampler: SamplerConfig,
    scales: Sequence[float],
    count: int,
    reuse: bool,
) -> torch.Tensor:
    """One run: a fresh editor's images [count, S, M, 3, H, W] of directions 0..count-1 at every scale."""
    editor = Editor(model, directions, samples, sampler, torch.empty(0), reuse_unedited_steps=reuse)  # no judge
    return torch.stack([editor(k, scales) for k in range(count)])


def compare(
    model: DiffusionModel,
    directions: Directions,
    samples: HeldOut,
    sampler: SamplerConfig,
    scales: Sequence[float],
    count: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """Seconds per edited image of the full and the reusing editor, timed interleaved; their ratio and the
    largest pixel difference between their images."""
    images: dict[str, torch.Tensor] = {}
    for name, reuse in CONFIGURATIONS.items():
        for _ in range(warmup):
            images[name] = edit_all(model, directions, samples, sampler, scales, count, reuse)
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for round_index in range(repeats):
        for name, reuse in CONFIGURATIONS.items():
            synchronize(model.device)
            start = time.perf_counter()
            images[name] = edit_all(model, directions, samples, sampler, scales, count, reuse)
            synchronize(model.device)
            seconds[name].append(time.perf_counter() - start)
            _log(f"[evaluate] round {round_index + 1}/{repeats} {name}: {seconds[name][-1]:.2f} s")
    edited = count * len(scales) * len(samples.seeds)
    results: dict[str, Any] = {"edited_images": edited}
    for name, values in seconds.items():
        median = statistics.median(values)
        results[name] = {"seconds": values, "median_seconds": median, "seconds_per_image": median / edited}
    results["ratio_full_vs_reuse"] = results["full"]["median_seconds"] / results["reuse"]["median_seconds"]
    results["max_abs_pixel_difference"] = float((images["full"] - images["reuse"]).abs().max())
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print its summary; write the JSON report when asked; return the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except PipelineError as error:
        parser.exit(2, f"error: {error}\n")
        raise  # unreachable: parser.exit raises SystemExit


def _run(args: argparse.Namespace) -> dict[str, Any]:
    for option in ("samples", "count", "repeats"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option} {getattr(args, option)}: must be >= 1")
    if args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup}: must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    params = stage_params("evaluate")
    sampler, cfg = params["sampler"], params["evaluate"]
    model_cfg = params["model"] if args.model is None else dataclasses.replace(params["model"], source=args.model)
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = open_model(model_cfg, str(device))
        directions = load_directions(args.directions, Expected(num_steps=sampler.steps))
        count = min(args.count, directions.num_directions)
        scales = cfg.scales_for(directions.method)
        samples = held_out(model, sampler, cfg.seed_offset, args.samples)
        started = time.perf_counter()
        results = compare(model, directions, samples, sampler, scales, count, args.repeats, args.warmup)
        results["first_edited_steps"] = (
            [first_edited_step(directions.delta(k, 1.0)) for k in range(count)] if directions.space == "h" else None
        )
        report = {
            "config": {
                "model": model_cfg.source, "directions": str(args.directions), "method": directions.method,
                "space": directions.space, "directions_edited": count, "scales": scales, "samples": args.samples,
                "seed_offset": cfg.seed_offset, "sampler": dataclasses.asdict(sampler), "repeats": args.repeats,
                "warmup": args.warmup, "device": str(device), "threads": threads,
            },
            "environment": {**environment(device), "total_seconds": time.perf_counter() - started},
            "results": results,
            "complete": True,
        }  # fmt: skip
    finally:  # main() may be called from another program: leave its thread count as it was
        torch.set_num_threads(previous_threads)
    print(summary(report))
    if args.json is not None:
        write_json(args.json, report)
        _log(f"wrote {args.json}")
    return report


def summary(report: dict[str, Any]) -> str:
    """The report's figures in a few lines."""
    config, results = report["config"], report["results"]
    lines = [
        f"{config['method']} ({config['space']}): {config['directions_edited']} directions x scales "
        f"{config['scales']} x {config['samples']} samples = {results['edited_images']} edited images; "
        f"injection {config['sampler']['injection']}, eta {config['sampler']['eta']}, "
        f"{config['sampler']['steps']} steps; first edited steps {results['first_edited_steps']}",
    ]
    for name in CONFIGURATIONS:
        lines.append(f"  {name:6s} {results[name]['seconds_per_image'] * 1000:8.2f} ms per edited image")
    lines.append(f"  ratio full / reuse x{results['ratio_full_vs_reuse']:.2f}")
    lines.append(f"  max |pixel difference| {results['max_abs_pixel_difference']:.1e}")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
