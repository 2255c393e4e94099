"""Build a randomly initialised pixel DDPM from an architecture file and save it as a diffusers pipeline folder.

``python -m benchmarks.build_model ARCHITECTURE OUT [--seed N]``. ARCHITECTURE is a JSON file with the
``unet`` (UNet2DModel) and ``scheduler`` (DDPMScheduler) configs, or the name of one in
``benchmarks/architectures`` (``ddpm-ema-celebahq-256``). The benchmarks time a model's architecture, not its
weights, so a real checkpoint's cost is measured without downloading it (``--model OUT``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from pipeline.io.errors import ConfigError, PipelineError

ARCHITECTURES = Path(__file__).resolve().parent / "architectures"


def load_architecture(name_or_path: str | Path) -> dict[str, Any]:
    """The ``{"unet": {...}, "scheduler": {...}}`` configs of an architecture file (a path, or a name in
    benchmarks/architectures); ConfigError naming the file or the first unknown key."""
    path = Path(name_or_path)
    if not path.exists() and (ARCHITECTURES / f"{name_or_path}.json").exists():
        path = ARCHITECTURES / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ARCHITECTURES.glob("*.json")))
        raise ConfigError(f"architecture {str(name_or_path)!r}: no such file or name (known: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"architecture {str(path)!r}: not JSON ({error})") from error
    for section, cls in (("unet", UNet2DModel), ("scheduler", DDPMScheduler)):
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"architecture {str(path)!r}: missing the {section!r} config")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(data[section]) - accepted)
        if unknown:
            raise ConfigError(f"architecture {str(path)!r}: {section}.{unknown[0]} is not a {cls.__name__} argument")
    return data


def build_model(architecture: dict[str, Any], out: Path, seed: int = 0) -> Path:
    """Initialise the UNet of ``architecture`` with torch seed ``seed`` (float32, CPU) and save it with its
    scheduler as a DDPM pipeline folder at ``out`` (written beside it, then moved in place: a folder that
    exists there is replaced only once the new one is complete). Returns ``out``."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**architecture["unet"])
    scheduler = DDPMScheduler(**architecture["scheduler"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.build_model", description=__doc__.splitlines()[0])
    parser.add_argument("architecture", help="architecture JSON file, or a name in benchmarks/architectures")
    parser.add_argument("out", type=Path, help="pipeline folder to write")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    try:
        out = build_model(load_architecture(args.architecture), args.out, args.seed)
    except PipelineError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
