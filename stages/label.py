"""DVC stage ``label``: score every stored sample with the configured attribute classifier (data/labels.csv),
then calibrate the table on the samples' scores when ``classifier.calibration`` asks for it.

With ``launch.shards > 1`` shard jobs label parts of the store (:mod:`pipeline.io.launch`), merged here.
"""

import torch
from omegaconf import DictConfig

from pipeline.classifiers import load_classifier
from pipeline.data.labels import job_shards, label_part_path, merge_label_parts, read_labels, write_labels
from pipeline.data.store import INDEX_FILE, open_store
from pipeline.diffusion.models import resolve_device
from pipeline.io.artefacts import LABEL_METRICS, LABELS, SAMPLES
from pipeline.io.errors import run_main
from pipeline.io.files import WORK_ROOT, stage_work
from pipeline.io.launch import LaunchConfig, ShardJob, run_shard_jobs
from pipeline.io.tracking import Tracker
from pipeline.steps import label as step
from pipeline.steps.sections import stage_params

PARTS = WORK_ROOT / "label"


def main() -> None:
    """Read params.yaml, classify x_0 of every sample, write the label table and attribute frequencies."""
    params = stage_params("label")
    cfg = params["classifier"]
    launch = params.runtime("launch", LaunchConfig)
    device = resolve_device(params.device)
    with Tracker.of(params) as tracker:
        # loaded first, also when shard jobs do the labelling: a bad classifier config fails before any job starts
        classifier = load_classifier(cfg, "cpu" if launch.sharded else device)
        store = open_store(SAMPLES)
        if launch.sharded:
            inputs = [cfg.path, f"{SAMPLES}/{INDEX_FILE}"]
            parts = stage_work("label", {**params.tracked, "device": str(device)}, inputs)
            run_shard_jobs("label", launch)
            merge_label_parts(PARTS, store, launch.shards, LABELS)
            parts.clear()
        else:
            write_labels(LABELS, store.seeds, classifier.attribute_names, step.run(store, classifier))
        # calibrated on the whole table as written (merged or not), so a sharded run gives the same bytes
        seeds, names, scores = read_labels(LABELS)
        scores, calibration = step.calibrate_table(scores, names, cfg.calibration)
        if calibration:
            write_labels(LABELS, seeds, names, scores)
        frequencies = (scores > 0.5).float().mean(dim=0).tolist()
        tracker.metrics(LABEL_METRICS, {"frequency": dict(zip(names, frequencies, strict=True)), **calibration})


def run_shard(raw: DictConfig, job: ShardJob, device: str) -> None:
    """Shard job ``job``: label the store shards s with s % count == index into its part of the table
    (skipped when a previous run of the same settings wrote that part)."""
    output = label_part_path(PARTS, job)
    if output.is_file():
        return
    classifier = load_classifier(stage_params("label", raw)["classifier"], resolve_device(device))
    store = open_store(SAMPLES)
    shards = job_shards(store, job)  # empty when there are more jobs than store shards: a header-only part
    names = classifier.attribute_names
    scores = step.run(store, classifier, shards=shards) if shards else torch.empty(0, len(names))
    seeds = [store.seeds[store.shards[s].start : store.shards[s].start + store.shards[s].count] for s in shards]
    write_labels(output, torch.cat(seeds) if seeds else torch.empty(0, dtype=torch.int64), names, scores)


if __name__ == "__main__":
    run_main(main)
