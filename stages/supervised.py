"""DVC stage ``supervised``: supervised directions in h (the configured estimator) and x_T, and conditional ones."""

from pipeline.data.hstats import load_hstats
from pipeline.data.labels import check_labels_match, read_labels
from pipeline.data.store import open_store
from pipeline.directions import save_directions
from pipeline.io.artefacts import HSTATS, LABELS, SAMPLES, SUPERVISED_METRICS, directions_path
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import supervised as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml and the statistics, write one directions file per supervised method."""
    params = stage_params("supervised")
    cfg = params["directions.supervised"]
    with Tracker.of(params) as tracker:
        store = open_store(SAMPLES)
        seeds, names, scores = read_labels(LABELS)
        check_labels_match(store, seeds)
        methods = step.run(store, load_hstats(HSTATS), names, cfg, scores, params["hstats"].threshold)
        for method, directions in methods.items():
            save_directions(directions_path(method), directions)
        norms = {method: {name: d.direction(name).norm().item() for name in d.names} for method, d in methods.items()}
        tracker.metrics(SUPERVISED_METRICS, {"norm": norms})


if __name__ == "__main__":
    run_main(main)
