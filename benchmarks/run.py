"""Entry point of the benchmarks: ``python -m benchmarks.run --suite {jacobian,sampling,all} [options]``.

Prints a table per suite and, with ``--json``, writes ``{"config", "environment", "results"}`` (see
benchmarks/README.md for every key and how to read the ratios).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch

from benchmarks import jacobian as jacobian_suite
from benchmarks import sampling as sampling_suite
from pipeline.diffusion.models import load_model, resolve_device
from pipeline.io.errors import ConfigError, PipelineError
from pipeline.io.files import write_json

DEFAULT_MODEL = "models/toyfaces/ddpm"
SUITES = ("jacobian", "sampling", "all")
SAMPLERS = ("ours_capture", "ours_no_capture", "ours_capture_fast", "diffusers_ddim", "diffusers_ddim_baseline")
REPOSITORY = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (every option with its default)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, default="all", help="which suite to run (default all)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"diffusers pipeline folder (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default auto)")
    parser.add_argument("--dtype", default="float32", help="UNet dtype (default float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="shrink every setting for a smoke test")
    parser.add_argument("--seed", type=int, default=0, help="sample and solver seed (default 0)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each timed one (default 1)")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true",
        help="torch.backends.cudnn.benchmark for the whole run: cuDNN times its convolution algorithms per shape "
        "(every sampler and product alike)",
    )  # fmt: skip
    group = parser.add_argument_group("jacobian suite")
    group.add_argument("--maps", default="J2,J1", help="comma-separated Jacobians to benchmark (default J2,J1)")
    group.add_argument("--mode", default="auto", help="J v by auto | forward | reverse mode (default auto)")
    group.add_argument(
        "--reference-mode", default=None,
        help="J v of the paper schemes (default: --mode, the project's engine; forward: as the papers' code)",
    )  # fmt: skip
    group.add_argument("--product-repeats", type=int, default=3, help="timed calls per product-cost entry")
    group.add_argument("--chunk-size", type=int, default=16, help="vectors per UNet call, project solver")
    group.add_argument(
        "--reference-warmup", type=int, default=None,
        help="untimed runs of each paper scheme before its timed one (default: --warmup; its kernels are primed)",
    )  # fmt: skip
    group.add_argument("--power-k", type=int, default=None, help="k of reference 2.2 (default 3)")
    group.add_argument("--subspace-n", type=int, default=None, help="n of reference 3.2 (default 50; quick 8)")
    group.add_argument("--sweep-sizes", default=None, help="comma-separated k of the size sweep (default 3,8,32,50)")
    group.add_argument(
        "--block-sizes", default="k,1", help="comma-separated Krylov block sizes tried against the references ('k': k)"
    )
    group.add_argument("--no-sweep-references", action="store_true", help="project solver alone in the sweep")
    group.add_argument(
        "--truth", choices=jacobian_suite.TRUTHS, default="auto",
        help="accuracy against the explicit Jacobian's SVD (exact), a tight Krylov solve (krylov), or exact when "
        "min(m, d) <= --exact-limit (auto, the default)",
    )  # fmt: skip
    group.add_argument("--exact-limit", type=int, default=8192, help="largest min(m, d) formed explicitly (auto)")
    group.add_argument("--truth-tolerance", type=float, default=1e-6, help="tolerance of the Krylov truth")
    group.add_argument(
        "--max-reference-products", type=int, default=6000, help="skip sweep references costing more (worst case)"
    )
    group = parser.add_argument_group("sampling suite")
    group.add_argument("--batch-size", type=int, default=None, help="images per sampler call (default 16; quick 4)")
    group.add_argument("--steps", type=int, default=None, help="DDIM steps (default 20; quick 5)")
    group.add_argument("--repeats", type=int, default=None, help="timed calls per sampler (default 5; quick 2)")
    group.add_argument("--memory-samples", default=None, help="comma-separated N (default 256,2048; quick 16,64)")
    group.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    group.add_argument(
        "--autocast", default="none", help="ours_capture_fast: mixed precision none | bfloat16 | float16"
    )
    group.add_argument("--channels-last", action="store_true", help="ours_capture_fast: NHWC memory format")
    group.add_argument(
        "--baseline-dtype", default=None, help="also time DDIMPipeline with the UNet in this dtype (e.g. float32)"
    )
    group.add_argument(
        "--compile", default="none", help="ours_capture_fast: torch.compile mode of the UNet layers (default none)"
    )
    group.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also profile one call of the fastest of ours (fast model if any): its N costliest operators",
    )  # fmt: skip
    return parser


def configs(args: argparse.Namespace) -> tuple[jacobian_suite.JacobianBenchConfig, sampling_suite.SamplingBenchConfig]:
    """Suite settings from the parsed arguments, with ``--quick`` shrinking the defaults."""
    quick = args.quick
    sweep = _int_list("--sweep-sizes", args.sweep_sizes) or ((3, 8) if quick else (3, 8, 32, 50))
    jacobian_cfg = jacobian_suite.JacobianBenchConfig(
        maps=tuple(name.strip() for name in args.maps.split(",") if name.strip()),
        seed=args.seed,
        power_k=_given(args.power_k, 3),
        subspace_n=_given(args.subspace_n, 8 if quick else 50),
        chunk_size=args.chunk_size,
        mode=args.mode,
        reference_mode=args.reference_mode,
        product_repeats=args.product_repeats,
        truth=args.truth,
        exact_limit=args.exact_limit,
        truth_tolerance=args.truth_tolerance,
        sweep_sizes=sweep,
        krylov_block_sizes=_block_sizes(args.block_sizes),
        sweep_references=not (quick or args.no_sweep_references),
        max_reference_products=args.max_reference_products,
        warmup=args.warmup,
        reference_warmup=args.reference_warmup,
    )
    memory = _int_list("--memory-samples", args.memory_samples) or ((16, 64) if quick else (256, 2048))
    sampling_cfg = sampling_suite.SamplingBenchConfig(
        batch_size=_given(args.batch_size, 4 if quick else 16),
        steps=_given(args.steps, 5 if quick else 20),
        repeats=_given(args.repeats, 2 if quick else 5),
        warmup=args.warmup,
        memory_samples=memory,
        memory_batch_size=16 if quick else 64,
        memory_shard_size=16 if quick else 64,
        memory_steps=_given(args.steps, 5 if quick else 20),
    )
    return jacobian_cfg, sampling_cfg


def _block_sizes(text: str) -> tuple[int | None, ...]:
    """Parse ``--block-sizes`` ('k,1' -> (None, 1)); 'k' means the number of triplets asked for."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or any(item != "k" and not item.isdigit() for item in items):
        raise ConfigError(f"--block-sizes {text!r}: expected comma-separated positive integers or 'k'")
    return tuple(None if item == "k" else int(item) for item in items)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device name and thread counts of this run."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
    }


def run_command(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict[str, Any]], argv: Sequence[str] | None
) -> dict[str, Any]:
    """Parse ``argv`` and return ``run(args)``; a PipelineError exits with status 2 and its one-line message,
    as the stages do (shared by the benchmark entry points)."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PipelineError as error:
        parser.exit(2, f"error: {error}\n")
        raise  # unreachable: parser.exit raises SystemExit


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected suites; print their tables; write the JSON report when asked; return the report."""
    return run_command(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    if args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup}: must be >= 0")
    if args.profile < 0:
        raise ConfigError(f"--profile {args.profile}: must be >= 0")
    jacobian_cfg, sampling_cfg = configs(args)
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    previous_threads, previous_verbosity = torch.get_num_threads(), diffusers.logging.get_verbosity()
    previous_cudnn_benchmark = torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    diffusers.logging.set_verbosity_error()  # no load-time advice in the benchmark output
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    try:
        return _run_suites(args, device, threads, jacobian_cfg, sampling_cfg)
    finally:  # main() may be called from another program (the tests): leave its settings as they were
        torch.set_num_threads(previous_threads)
        diffusers.logging.set_verbosity(previous_verbosity)
        torch.backends.cudnn.benchmark = previous_cudnn_benchmark


def _run_suites(
    args: argparse.Namespace,
    device: torch.device,
    threads: int | None,
    jacobian_cfg: jacobian_suite.JacobianBenchConfig,
    sampling_cfg: sampling_suite.SamplingBenchConfig,
) -> dict[str, Any]:
    model_path = _model_path(args.model)
    model = load_model(model_path, device=str(device), dtype=args.dtype, clip_sample=True)
    report: dict[str, Any] = {
        "config": {
            "suite": args.suite,
            "model": model_path,
            "device": str(device),
            "dtype": args.dtype,
            "threads": threads,
            "quick": args.quick,
            "jacobian": jacobian_suite.config_dict(jacobian_cfg),
            "sampling": sampling_suite.config_dict(sampling_cfg),
            "memory": not args.no_memory,
            "fast": {"autocast": args.autocast, "channels_last": args.channels_last, "compile": args.compile},
            "baseline_dtype": args.baseline_dtype,
            "cudnn_benchmark": args.cudnn_benchmark,
            "profile": args.profile,
        },
        "environment": environment(device),
        "results": {},
    }
    started = time.perf_counter()

    def save_partial(results: dict[str, Any]) -> None:  # what a run stopped by a time limit keeps
        if args.json is not None:
            write_json(args.json, {**report, "results": {**report["results"], "jacobian": results}, "complete": False})

    if args.suite in ("jacobian", "all"):
        results = jacobian_suite.run_jacobian(model, jacobian_cfg, log=_log, on_map=save_partial)
        report["results"]["jacobian"] = results
        print(jacobian_tables(results))
    if args.suite in ("sampling", "all"):
        _log("[sampling] throughput")
        fast_model = None
        if args.autocast != "none" or args.channels_last or args.compile != "none":
            fast_model = load_model(
                model_path, device=str(device), dtype=args.dtype, clip_sample=True, autocast=args.autocast,
                channels_last=args.channels_last, compile=args.compile,
            )  # fmt: skip
        baseline_model = None
        if args.baseline_dtype is not None:
            baseline_model = load_model(model_path, device=str(device), dtype=args.baseline_dtype, clip_sample=True)
        results = {"throughput": sampling_suite.throughput(model, sampling_cfg, fast_model, baseline_model)}
        if args.profile:
            _log(f"[sampling] profile of one {'ours_capture_fast' if fast_model else 'ours_capture'} call")
            results["profile"] = sampling_suite.operator_profile(fast_model or model, sampling_cfg, args.profile)
        if not args.no_memory:
            _log(f"[sampling] peak memory of generate + hstats at N = {list(sampling_cfg.memory_samples)}")
            with tempfile.TemporaryDirectory(prefix="bench-stores-") as folder:
                results["memory"] = sampling_suite.peak_memory(
                    model_path, str(device), args.dtype, threads, Path(folder), sampling_cfg
                )
        report["results"]["sampling"] = results
        print(sampling_tables(results, sampling_cfg))
    report["environment"]["total_seconds"] = time.perf_counter() - started
    report["complete"] = True
    if args.json is not None:
        write_json(args.json, report)
        _log(f"wrote {args.json}")
    return report


def jacobian_tables(results: dict[str, Any]) -> str:
    """The jacobian suite's results as text tables: reference vs project, ratios, and the size sweep."""
    point = results["point"]
    names = [name for name in jacobian_suite.MAPS if name in results]
    truths = ", ".join(f"{name} {results[name]['truth']['method']}" for name in names)
    lines = [
        f"\nJacobian suite at step {point['step_index']} (timestep {point['timestep']}), seed {point['seed']}; "
        f"accuracy against: {truths}"
    ]
    rows = []
    for name in names:
        entry = results[name]["reference"]
        reference = entry["reference"]
        rows.append(
            [
                name,
                entry["scheme"],
                entry["k"],
                "-",
                reference["products"],
                _s(reference["seconds"]),
                _e(reference["sv_rel_error"]),
                _e(reference["max_sine"]),
                all(reference["converged"]),
            ]
        )
        shown = entry["project"]["matched"] or entry["project"]["attempts"][-1]
        rows.append(
            [
                name,
                f"block_krylov_svd (block {shown['block_size']})",
                entry["k"],
                f"{shown['tolerance']:.0e}",
                shown["products"],
                _s(shown["seconds"]),
                _e(shown["sv_rel_error"]),
                _e(shown["max_sine"]),
                shown["converged"],
            ]
        )
    headers = ["map", "method", "k", "tol", "products", "seconds", "sv rel err", "max sine", "converged"]
    lines.append(format_table(headers, rows))
    ratio_rows = []
    for name in names:
        entry = results[name]["reference"]
        ratio_rows.append([name, entry["reached"], _x(entry["speed_ratio"]), _x(entry["products_ratio"])])
    lines.append("reference / project (> 1: the project's solver is faster at the reference's accuracy)")
    lines.append(format_table(["map", "reached", "speed ratio", "products ratio"], ratio_rows))
    sweep_rows = []
    for name in names:
        for entry in results[name]["sweep"]:
            if "skipped" in entry:
                sweep_rows.append([name, entry["k"], entry["skipped"], *[""] * 9])
                continue
            ladder = entry["project"]
            shown = ladder["matched"] or ladder["attempts"][-1]
            reference = entry.get("reference") or {}
            if "skipped" in reference or not reference:
                reference_cells = ["-"] * 4
            else:
                reference_cells = [
                    reference["products"],
                    _s(reference["seconds"]),
                    _e(reference["sv_rel_error"]),
                    _e(reference["max_sine"]),
                ]
            sweep_rows.append(
                [
                    name,
                    entry["k"],
                    f"{shown['tolerance']:.0e}",
                    shown["products"],
                    _s(shown["seconds"]),
                    _e(shown["sv_rel_error"]),
                    _e(shown["max_sine"]),
                    ladder["reached"],
                    *reference_cells,
                ]
            )
    lines.append("size sweep: project solver at the target accuracy (and the paper's scheme as it stops by itself)")
    headers = [
        "map",
        "k",
        "tol",
        "products",
        "seconds",
        "sv rel err",
        "max sine",
        "reached",
        "ref products",
        "ref seconds",
        "ref sv err",
        "ref sine",
    ]
    lines.append(format_table(headers, sweep_rows))
    engines = [engine for engine, _, _ in jacobian_suite.PRODUCT_ENGINES]
    product_rows = [
        [name, batch, _ms(row["vjp_ms"]), *[_ms(row[f"{engine}_ms"]) for engine in engines]]
        for name in names
        for batch, row in results[name]["products"]["batches"].items()
    ]
    lines.append("milliseconds per product call (median): J^T u, and J v by each engine ('-': the engine failed)")
    headers = ["map", "vectors", "J^T u", *[f"J v {engine.removeprefix('jvp_')}" for engine in engines]]
    lines.append(format_table(headers, product_rows))
    lines.append("the same products one vector at a time and batched: largest relative difference (project's engine)")
    consistency = [results[name]["products"]["batch_consistency"] for name in names]
    consistency_rows = [
        [name, row["vectors"], f"{row['jvp_rel_diff']:.1e}", f"{row['vjp_rel_diff']:.1e}"]
        for name, row in zip(names, consistency, strict=True)
    ]
    lines.append(format_table(["map", "vectors", "J v", "J^T u"], consistency_rows))
    return "\n".join(lines)


def sampling_tables(results: dict[str, Any], cfg: sampling_suite.SamplingBenchConfig) -> str:
    """The sampling suite's results as text tables: throughput with ratios, and peak memory."""
    speed = results["throughput"]
    lines = [f"\nSampling suite: batch {cfg.batch_size}, {cfg.steps} DDIM steps, eta 0, median of {cfg.repeats}"]
    baseline = speed["diffusers_ddim"]["images_per_second"]
    rows = [
        [
            name,
            _s(speed[name]["median_seconds"]),
            f"{speed[name]['images_per_second']:.2f}",
            _x(speed[name]["images_per_second"] / baseline),
        ]
        for name in SAMPLERS
        if name in speed
    ]
    lines.append(format_table(["sampler", "median s", "images/s", "vs DDIMPipeline"], rows))
    if "memory" in results:
        memory = results["memory"]
        rows = [
            [
                run["num_samples"],
                f"{run['peak_rss_mib']:.1f}",
                f"{run['rss_after_load_mib']:.1f}",
                _s(run["generate_seconds"]),
                _s(run["hstats_seconds"]),
            ]
            for run in memory["runs"]
        ]
        lines.append("peak RSS of generate + hstats, fresh process each (MiB)")
        lines.append(format_table(["N", "peak", "after load", "generate s", "hstats s"], rows))
        lines.append(f"relative difference of the peaks: {memory['relative_difference']:+.2%}")
    if "profile" in results:
        profiled = results["profile"]
        where = f"{profiled['activity']} self time, {profiled['total_ms']:.1f} ms"
        lines.append(f"costliest operators of one call ({where})")
        rows = [
            [entry["name"][:60], entry["calls"], f"{entry['self_ms']:.2f}", f"{entry['share']:.1%}"]
            for entry in profiled["operators"]
        ]
        lines.append(format_table(["operator", "calls", "self ms", "share"], rows))
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table (columns as wide as their widest cell)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def _model_path(path: str) -> str:
    """``path`` as given when it exists, else relative to the repository root when that exists."""
    if Path(path).exists() or Path(path).is_absolute() or not (REPOSITORY / path).exists():
        return path
    return str(REPOSITORY / path)


def _given(value: int | None, default: int) -> int:
    """``value`` when the option was given (even if invalid, so that the suite's check reports it), else ``default``."""
    return default if value is None else value


def _int_list(option: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers") from error
    if not values or any(value < 1 for value in values):
        raise ConfigError(f"{option} {text!r}: expected positive integers")
    return values


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _s(seconds: float) -> str:
    return f"{seconds:.3f}"


def _e(value: float) -> str:
    return f"{value:.1e}"


def _ms(milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{milliseconds:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"x{ratio:.2f}"


if __name__ == "__main__":
    main()
