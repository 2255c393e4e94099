"""DVC stage ``pca``: per-step and all-step PCA directions of h (directions/pca_*.safetensors)."""

from pipeline import study
from pipeline.directions import save_directions
from pipeline.data.hstats import load_hstats
from pipeline.io.params import load_params, load_section
from pipeline.data.store import open_store
from pipeline.io.tracking import LoggingConfig, Tracker

SAMPLES = "data/samples"
HSTATS = "data/hstats.safetensors"
PER_STEP = "directions/pca_per_step.safetensors"
ALL_STEPS = "directions/pca_all_steps.safetensors"
SPECTRUM = "plots/pca_spectrum.csv"
METRICS = "metrics/pca.json"


def main() -> None:
    """Read params.yaml, stream the store through a randomized SVD, write both directions files and the spectrum."""
    params = load_params()
    cfg = load_section("directions", study.DirectionsConfig, params).pca
    with Tracker(
        "pca", load_section("logging", LoggingConfig, params), {"pca": params["directions"]["pca"]}
    ) as tracker:
        store = open_store(SAMPLES)
        result = study.pca(store, load_hstats(HSTATS), cfg)
        save_directions(PER_STEP, result.per_step)
        save_directions(ALL_STEPS, result.all_steps)
        rows = study.spectrum_rows(result)
        tracker.plot(SPECTRUM, rows, x="component", y="all_steps", title="PCA explained variance ratio")
        tracker.metrics(METRICS, {"explained_variance_all_steps": sum(row["all_steps"] for row in rows)})


if __name__ == "__main__":
    main()
