"""Step ``toy_dataset``: render ToyFaces faces with their exact attributes into a labelled image folder in the
users' layout (PNG files and a ``file,<attribute>,...`` CSV of 0/1), the default data of ``train_classifier``."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.io.files import atomic_path
from pipeline.io.images import save_png
from pipeline.io.validation import require
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, ToyFacesConfig, make_batch

PARAMS = ("toyfaces", "toy_dataset")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class ToyDatasetConfig:
    """Parameters of the ``toy_dataset`` stage: how many faces, from which world seed on."""

    num_images: int = 2000
    seed_offset: int = 60_000_000
    batch_size: int = 500

    def __post_init__(self) -> None:
        require(self.num_images >= 2, "toy_dataset.num_images", self.num_images, "must be >= 2")
        require(self.batch_size >= 1, "toy_dataset.batch_size", self.batch_size, "must be >= 1")


def run(cfg: ToyDatasetConfig, world: ToyFacesConfig, images_dir: str | Path, labels_path: str | Path) -> None:
    """Write ``num_images`` faces (seeds ``seed_offset`` on) as ``images_dir/<seed>.png`` (8-bit RGB at the world's
    resolution) and their binary attributes as the CSV ``labels_path`` (``file,<attribute>,...``, rows in seed
    order); both written atomically, equal settings give equal bytes."""
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.num_images)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", *BINARY_ATTRIBUTES])
    with atomic_path(images_dir) as folder:
        folder.mkdir()
        for start in range(0, len(seeds), cfg.batch_size):
            batch = seeds[start : start + cfg.batch_size]
            images, factors = make_batch(batch, world)
            for seed, image, labels in zip(batch, images, factors.binary.int().tolist(), strict=True):
                save_png(image, folder / f"{seed}.png")
                writer.writerow([f"{seed}.png", *labels])
    with atomic_path(labels_path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue())
