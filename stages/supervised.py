"""DVC stage ``supervised``: mean-difference directions in h and x_T, and conditional ones."""

from pipeline.data.hstats import load_hstats
from pipeline.data.labels import read_labels
from pipeline.data.store import open_store
from pipeline.directions import save_directions
from pipeline.directions.methods import directions_path
from pipeline.io.files import write_json
from pipeline.steps import supervised as step
from pipeline.steps.sections import stage_params

SAMPLES = "data/samples"
LABELS = "data/labels.csv"
HSTATS = "data/hstats.safetensors"
METRICS = "metrics/supervised.json"


def main() -> None:
    """Read params.yaml and the statistics, write one directions file per supervised method."""
    cfg = stage_params("supervised")["directions.supervised"]
    _, names, _ = read_labels(LABELS)
    methods = step.run(open_store(SAMPLES), load_hstats(HSTATS), names, cfg)
    for method, directions in methods.items():
        save_directions(directions_path(method), directions)
    norms = {method: {name: d.direction(name).norm().item() for name in d.names} for method, d in methods.items()}
    write_json(METRICS, {"norm": norms})


if __name__ == "__main__":
    main()
