"""DVC stage ``hstats``: streaming h statistics (means, top/bottom-k and label-conditioned group means)."""

from pipeline.data.hstats import save_hstats
from pipeline.data.labels import check_labels_match, read_labels
from pipeline.data.store import open_store
from pipeline.io.artefacts import HSTATS, LABELS, SAMPLES
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import hstats as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml and the label table, make one pass over the store, write the statistics file."""
    params = stage_params("hstats")
    with Tracker.of(params) as tracker:
        store = open_store(SAMPLES)
        seeds, names, scores = read_labels(LABELS)
        check_labels_match(store, seeds)
        stats = step.run(store, names, scores, params["hstats"])
        save_hstats(HSTATS, stats)
        tracker.table("groups", [{"group": group, "samples": size} for group, size in stats.group_sizes.items()])
        tracker.summary({"samples": stats.count, "groups": len(stats.group_sizes)})


if __name__ == "__main__":
    run_main(main)
