"""DVC stage ``pca``: per-step and all-step PCA directions of h (directions/pca_*.safetensors)."""

from pipeline.data.hstats import load_hstats
from pipeline.data.store import open_store
from pipeline.directions import save_directions
from pipeline.directions.methods import directions_path
from pipeline.io.errors import run_main
from pipeline.io.tracking import LoggingConfig, Tracker
from pipeline.steps import pca as step
from pipeline.steps.sections import stage_params

SAMPLES = "data/samples"
HSTATS = "data/hstats.safetensors"
SPECTRUM = "plots/pca_spectrum.csv"
METRICS = "metrics/pca.json"


def main() -> None:
    """Read params.yaml, stream the store through a randomized SVD, write both directions files and the spectrum."""
    params = stage_params("pca")
    with Tracker("pca", params.runtime("logging", LoggingConfig), params.tracked) as tracker:
        result = step.run(open_store(SAMPLES), load_hstats(HSTATS), params["directions.pca"])
        save_directions(directions_path("pca_per_step"), result.per_step)
        save_directions(directions_path("pca_all_steps"), result.all_steps)
        rows = step.spectrum_rows(result)
        tracker.plot(SPECTRUM, rows, x="component", y="all_steps", title="PCA explained variance ratio")
        tracker.metrics(METRICS, {"explained_variance_all_steps": sum(row["all_steps"] for row in rows)})


if __name__ == "__main__":
    run_main(main)
