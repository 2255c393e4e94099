"""Peak memory of the streaming stages (hstats, PCA, supervised) against N, on synthetic stores of realistic h.

    python -m benchmarks.streaming [--sizes 500,5000] [--h-shape 512,8,8] [--steps 10] [--json out.json]

For each N a store of N random samples with h of ``--h-shape`` at ``--steps`` steps (float16; celebahq-256's
bottleneck is 512x8x8) is written by :func:`pipeline.data.store_writing.synthetic_store` in one subprocess, then a fresh
subprocess runs the steps :func:`pipeline.steps.hstats.run`, :func:`pipeline.steps.pca.run` and
:func:`pipeline.steps.supervised.run` on it (random scores for two attributes) and reports its peak
resident memory. ``relative_difference`` = (peak at the largest N - peak at the smallest) / peak at the
smallest: streaming keeps it near 0, while holding all h would add N x steps x prod(h_shape) x 4 bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory_probe import peak_rss_mib, probe_top_k
from pipeline.data.store import open_store
from pipeline.data.store_writing import synthetic_store
from pipeline.steps import hstats, pca, supervised
from pipeline.steps.hstats import HStatsConfig
from pipeline.steps.pca import PCAConfig
from pipeline.steps.supervised import SupervisedConfig

ATTRIBUTES = ("attribute_a", "attribute_b")


def probe(folder: Path, batch_size: int = 64) -> dict[str, Any]:
    """hstats, PCA and supervised directions of the store at ``folder``; peak RSS (MiB) and seconds of each."""
    store = open_store(folder)
    opened = peak_rss_mib()
    generator = torch.Generator().manual_seed(0)
    ranks = torch.stack([torch.randperm(len(store), generator=generator) for _ in ATTRIBUTES], dim=1)
    scores = (ranks.float() + 0.5) / len(store)
    seconds = {}
    begin = time.perf_counter()
    cfg = HStatsConfig(top_k=probe_top_k(len(store)), batch_size=batch_size)
    stats = hstats.run(store, ATTRIBUTES, scores, cfg, progress=False)
    seconds["hstats"] = time.perf_counter() - begin
    begin = time.perf_counter()
    pca.run(store, stats, PCAConfig(), batch_size=batch_size)
    seconds["pca"] = time.perf_counter() - begin
    begin = time.perf_counter()
    supervised_cfg = SupervisedConfig(conditional={"attribute_a": ["attribute_b"]})
    supervised.run(store, stats, ATTRIBUTES, supervised_cfg, scores, cfg.threshold)
    seconds["supervised"] = time.perf_counter() - begin
    return {"num_samples": len(store), "rss_after_open_mib": opened, "peak_rss_mib": peak_rss_mib(),
            "seconds": seconds}  # fmt: skip


def measure(
    sizes: Sequence[int], h_shape: Sequence[int], steps: int, shard_size: int = 64, timeout: float = 7200.0
) -> dict[str, Any]:
    """For each N of ``sizes``: write a synthetic store, then :func:`probe` it in a fresh subprocess."""
    runs = []
    for count in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"streaming-{count}-"))
        try:
            shape = ",".join(str(v) for v in h_shape)
            common = [sys.executable, "-m", "benchmarks.streaming"]
            begin = time.perf_counter()
            subprocess.run([*common, "make", str(folder / "store"), str(count), shape, str(steps), str(shard_size)],
                           check=True, timeout=timeout)  # fmt: skip
            written = time.perf_counter() - begin
            output = subprocess.run([*common, "probe", str(folder / "store")], check=True, timeout=timeout,
                                    capture_output=True, text=True)  # fmt: skip
            run = json.loads(output.stdout.strip().splitlines()[-1])
            run["write_seconds"] = written
            run["store_gib"] = sum(p.stat().st_size for p in (folder / "store").iterdir()) / 2**30
            runs.append(run)
            print(json.dumps(run), file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    first, last = runs[0]["peak_rss_mib"], runs[-1]["peak_rss_mib"]
    return {"h_shape": list(h_shape), "steps": steps, "runs": runs, "relative_difference": (last - first) / first}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: the comparison (default), or one of its subprocess steps (``make`` / ``probe``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["make"]:
        folder, count, shape, steps, shard_size = argv[1:]
        synthetic_store(folder, int(count), h_shape=[int(v) for v in shape.split(",")], steps=int(steps),
                        shard_size=int(shard_size))  # fmt: skip
        return
    if argv[:1] == ["probe"]:
        torch.set_num_threads(1)
        print(json.dumps(probe(Path(argv[1]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000", help="comma-separated N")
    parser.add_argument("--h-shape", default="512,8,8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure([int(v) for v in args.sizes.split(",")], [int(v) for v in args.h_shape.split(",")],
                     args.steps, args.shard_size)  # fmt: skip
    for run in result["runs"]:
        print(f"N={run['num_samples']:>6}  store {run['store_gib']:.2f} GiB  peak RSS {run['peak_rss_mib']:.0f} MiB  "
              f"hstats {run['seconds']['hstats']:.1f} s  pca {run['seconds']['pca']:.1f} s  "
              f"supervised {run['seconds']['supervised']:.1f} s")  # fmt: skip
    print(f"relative difference of peak RSS: {result['relative_difference']:+.1%}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
