"""DVC stage ``hstats``: streaming h statistics (means, top/bottom-k and label-conditioned group means)."""

from pipeline import study
from pipeline.data.hstats import save_hstats
from pipeline.io.params import load_params, load_section
from pipeline.data.store import open_store

SAMPLES = "data/samples"
LABELS = "data/labels.csv"
HSTATS = "data/hstats.safetensors"


def main() -> None:
    """Read params.yaml and the label table, make one pass over the store, write the statistics file."""
    cfg = load_section("hstats", study.HStatsConfig, load_params())
    store = open_store(SAMPLES)
    seeds, names, scores = study.read_labels(LABELS)
    study.check_labels_match(store, seeds)
    save_hstats(HSTATS, study.hstats(store, names, scores, cfg))


if __name__ == "__main__":
    main()
