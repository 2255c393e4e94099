"""DVC stage ``label``: score every stored sample with the configured attribute classifier (data/labels.csv).

With ``launch.shards > 1`` shard jobs label parts of the store (:mod:`pipeline.io.launch`), merged here.
"""

import torch
from omegaconf import DictConfig

from pipeline import study
from pipeline.io.files import WORK_ROOT, stage_work
from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.io.launch import LaunchConfig, ShardJob, job_shards, label_part_path, merge_label_parts, run_shard_jobs
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.data.store import INDEX_FILE, open_store
from pipeline.io.tracking import LoggingConfig, Tracker

SAMPLES = "data/samples"
LABELS = "data/labels.csv"
METRICS = "metrics/label.json"
PARTS = WORK_ROOT / "label"


def main() -> None:
    """Read params.yaml, classify x_0 of every sample, write the label table and attribute frequencies."""
    params = load_params()
    cfg = load_section("classifier", ClassifierConfig, params)
    launch = load_section("launch", LaunchConfig, params)
    device = resolve_device(load_value("device", str, params))
    with Tracker(
        "label", load_section("logging", LoggingConfig, params), {"classifier": params["classifier"]}
    ) as tracker:
        # loaded first, also when shard jobs do the labelling: a bad classifier config fails before any job starts
        classifier = load_classifier(cfg, "cpu" if launch.sharded else device)
        store = open_store(SAMPLES)
        if launch.sharded:
            fingerprint = {"classifier": params["classifier"], "device": str(device)}
            parts = stage_work("label", fingerprint, [cfg.path, f"{SAMPLES}/{INDEX_FILE}"])
            run_shard_jobs("label", launch)
            merge_label_parts(PARTS, store, launch.shards, LABELS)
            parts.clear()
        else:
            study.write_labels(LABELS, store.seeds, classifier.attribute_names, study.label(store, classifier))
        _, names, scores = study.read_labels(LABELS)
        frequencies = (scores > 0.5).float().mean(dim=0).tolist()
        tracker.metrics(METRICS, {"frequency": dict(zip(names, frequencies, strict=True))})


def run_shard(params: DictConfig, job: ShardJob, device: str) -> None:
    """Shard job ``job``: label the store shards s with s % count == index into its part of the table
    (skipped when a previous run of the same settings wrote that part)."""
    output = label_part_path(PARTS, job)
    if output.is_file():
        return
    classifier = load_classifier(load_section("classifier", ClassifierConfig, params), resolve_device(device))
    store = open_store(SAMPLES)
    shards = job_shards(store, job)  # empty when there are more jobs than store shards: a header-only part
    names = classifier.attribute_names
    scores = study.label(store, classifier, shards=shards) if shards else torch.empty(0, len(names))
    seeds = [store.seeds[store.shards[s].start : store.shards[s].start + store.shards[s].count] for s in shards]
    study.write_labels(output, torch.cat(seeds) if seeds else torch.empty(0, dtype=torch.int64), names, scores)


if __name__ == "__main__":
    main()
