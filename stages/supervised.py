"""DVC stage ``supervised``: top-k minus bottom-k mean directions in h and x_T, and conditional ones."""

from pipeline import study
from pipeline.io.files import write_json
from pipeline.directions import save_directions
from pipeline.data.hstats import load_hstats
from pipeline.io.params import load_params, load_section
from pipeline.data.store import open_store

SAMPLES = "data/samples"
LABELS = "data/labels.csv"
HSTATS = "data/hstats.safetensors"
OUTPUT = "directions/{method}.safetensors"
METRICS = "metrics/supervised.json"


def main() -> None:
    """Read params.yaml and the statistics, write one directions file per supervised method."""
    cfg = load_section("directions", study.DirectionsConfig, load_params()).supervised
    store = open_store(SAMPLES)
    _, names, _ = study.read_labels(LABELS)
    methods = study.supervised_methods(store, load_hstats(HSTATS), names, cfg)
    for method, directions in methods.items():
        save_directions(OUTPUT.format(method=method), directions)
    norms = {method: {name: d.direction(name).norm().item() for name in d.names} for method, d in methods.items()}
    write_json(METRICS, {"norm": norms})


if __name__ == "__main__":
    main()
