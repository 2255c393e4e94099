"""Suite ``evaluate``: edits of held-out samples that reuse the unedited steps, against the full decode and
against an earlier revision's code.

    python -m benchmarks.evaluate [--model models/toyfaces/ddpm] [--directions directions/supervised.safetensors]
        [--samples 32] [--count 2] [--repeats 2] [--warmup 1] [--threads N] [--device auto]
        [--baseline-rev REV] [--json out.json]

The evaluate stage's edits: :class:`pipeline.editing.samples.Editor` decodes the first ``--count`` directions of
the file at the evaluate section's scales (``evaluate.scales``, or its ``method_scales`` for the file's method) on
``--samples`` held-out seeds from ``evaluate.seed_offset``, with the ``sampler`` section of params.yaml. One run
is a fresh editor decoding every direction, so the reuse side pays for its unedited states once per run, as a
stage does. ``full`` is ``reuse_unedited_steps=False`` (every step from x_T), ``reuse`` the default; after
``--warmup`` untimed runs of each, ``--repeats`` rounds time them interleaved (full, reuse, full, reuse, ...) so
that drifts in machine load hit both alike. Reports the median seconds per edited image of each, the ratio
full / reuse (> 1: reuse is faster), the largest pixel difference between their images (in [0, 1] units) and
each direction's first edited step.

``--baseline-rev REV`` adds ``baseline``: the same edits by the code of git revision REV (its tree exported to a
temporary folder; each of its rounds a fresh process that loads the model and the editor of that code, timed
from its first edit decode on, interleaved with the others), with the ratio baseline / reuse and the largest
pixel difference to ``reuse``. It measures what a change to the editor or the sampler gained, side by side on
one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.reference import synchronize
from benchmarks.run import environment, run_command
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
    parser.add_argument("--baseline-rev", default=None, help="also time the edits by this git revision's code")
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


BASELINE_ROUND = """
import json, sys, time, torch
from dataclasses import replace
from pipeline.diffusion.models import open_model
from pipeline.directions import load_directions
from pipeline.editing.samples import Editor, held_out
from pipeline.steps.sections import stage_params
job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
params = stage_params("evaluate")
sampler = params["sampler"]
model = open_model(replace(params["model"], source=job["model"]), job["device"])
directions = load_directions(job["directions"])
samples = held_out(model, sampler, job["seed_offset"], job["samples"])
editor = Editor(model, directions, samples, sampler, torch.empty(0))
start = time.perf_counter()
images = torch.stack([editor(k, job["scales"]) for k in range(job["count"])])
seconds = time.perf_counter() - start
torch.save(images, job["images"])
print(json.dumps({"seconds": seconds}))
"""
"""One baseline round, run by a fresh interpreter in the exported tree of ``--baseline-rev``: the same edits through
the APIs that revision has (``stage_params``, ``open_model``, ``load_directions``, ``held_out``, ``Editor``)."""


def export_revision(revision: str, folder: Path) -> Path:
    """The tree of git revision ``revision`` of this repository, exported under ``folder``; ConfigError naming the
    revision when git cannot read it."""
    root = Path(__file__).resolve().parents[1]
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", revision], capture_output=True, check=False)
    if archive.returncode != 0:
        raise ConfigError(f"--baseline-rev {revision}: {archive.stderr.decode().strip().splitlines()[-1]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def baseline_round(tree: Path, job: dict[str, Any]) -> tuple[float, torch.Tensor]:
    """Seconds and images [count, S, M, 3, H, W] of one baseline round (:data:`BASELINE_ROUND` in ``tree``)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", BASELINE_ROUND, json.dumps(job)], cwd=tree, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise PipelineError(f"baseline round failed: {done.stderr.strip().splitlines()[-1]}")
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds, torch.load(job["images"], weights_only=True)


def compare(
    model: DiffusionModel,
    directions: Directions,
    samples: HeldOut,
    sampler: SamplerConfig,
    scales: Sequence[float],
    count: int,
    repeats: int,
    warmup: int,
    baseline: tuple[Path, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Seconds per edited image of the full and the reusing editor (and, with ``baseline`` = (exported tree, job),
    of the baseline revision's), timed interleaved; the ratios to ``reuse`` and the largest pixel differences
    between their images and its."""
    names = [*CONFIGURATIONS, *(["baseline"] if baseline is not None else [])]

    def run(name: str) -> tuple[float, torch.Tensor]:
        if name == "baseline":
            assert baseline is not None
            return baseline_round(*baseline)
        synchronize(model.device)
        start = time.perf_counter()
        edited = edit_all(model, directions, samples, sampler, scales, count, CONFIGURATIONS[name])
        synchronize(model.device)
        return time.perf_counter() - start, edited

    images: dict[str, torch.Tensor] = {}
    for name in names:
        for _ in range(warmup):
            images[name] = run(name)[1]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names:
            elapsed, images[name] = run(name)
            seconds[name].append(elapsed)
            _log(f"[evaluate] round {round_index + 1}/{repeats} {name}: {elapsed:.2f} s")
    edited = count * len(scales) * len(samples.seeds)
    results: dict[str, Any] = {"edited_images": edited}
    for name, values in seconds.items():
        median = statistics.median(values)
        results[name] = {"seconds": values, "median_seconds": median, "seconds_per_image": median / edited}
    results["ratio_full_vs_reuse"] = results["full"]["median_seconds"] / results["reuse"]["median_seconds"]
    results["max_abs_pixel_difference"] = float((images["full"] - images["reuse"]).abs().max())
    if baseline is not None:
        results["ratio_baseline_vs_reuse"] = results["baseline"]["median_seconds"] / results["reuse"]["median_seconds"]
        results["max_abs_pixel_difference_baseline"] = float((images["baseline"] - images["reuse"]).abs().max())
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print its summary; write the JSON report when asked; return the report."""
    return run_command(build_parser(), _run, argv)


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
        with tempfile.TemporaryDirectory() as folder:
            baseline = None
            if args.baseline_rev is not None:
                job = {
                    "model": str(Path(model_cfg.source).resolve()), "directions": str(Path(args.directions).resolve()),
                    "device": str(device), "threads": threads or torch.get_num_threads(), "scales": list(scales),
                    "count": count, "samples": args.samples, "seed_offset": cfg.seed_offset,
                    "images": str(Path(folder) / "baseline.pt"),
                }  # fmt: skip
                baseline = (export_revision(args.baseline_rev, Path(folder)), job)
            results = compare(
                model, directions, samples, sampler, scales, count, args.repeats, args.warmup, baseline
            )
        results["first_edited_steps"] = (
            [first_edited_step(directions.delta(k, 1.0)) for k in range(count)] if directions.space == "h" else None
        )
        report = {
            "config": {
                "model": model_cfg.source, "directions": str(args.directions), "method": directions.method,
                "space": directions.space, "directions_edited": count, "scales": scales, "samples": args.samples,
                "seed_offset": cfg.seed_offset, "sampler": dataclasses.asdict(sampler), "repeats": args.repeats,
                "warmup": args.warmup, "device": str(device), "threads": threads, "baseline_rev": args.baseline_rev,
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
    for name in (*CONFIGURATIONS, "baseline"):
        if name in results:
            label = name if name != "baseline" else f"baseline ({config['baseline_rev']})"
            lines.append(f"  {label}: {results[name]['seconds_per_image'] * 1000:.2f} ms per edited image")
    lines.append(f"  ratio full / reuse x{results['ratio_full_vs_reuse']:.2f}")
    lines.append(f"  max |pixel difference| full vs reuse {results['max_abs_pixel_difference']:.1e}")
    if "baseline" in results:
        lines.append(f"  ratio baseline / reuse x{results['ratio_baseline_vs_reuse']:.2f}")
        lines.append(f"  max |pixel difference| baseline vs reuse {results['max_abs_pixel_difference_baseline']:.1e}")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
