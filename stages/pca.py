"""DVC stage ``pca``: per-step and all-step PCA directions of h (directions/pca_*.safetensors)."""

from pipeline.data.hstats import load_hstats
from pipeline.data.store import open_store
from pipeline.directions import save_directions
from pipeline.io.artefacts import HSTATS, PCA_METRICS, PCA_SPECTRUM, SAMPLES, directions_path
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps import pca as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml, stream the store through a randomized SVD, write both directions files and the spectrum."""
    params = stage_params("pca")
    with Tracker.of(params) as tracker:
        result = step.run(open_store(SAMPLES), load_hstats(HSTATS), params["directions.pca"])
        save_directions(directions_path("pca_per_step"), result.per_step)
        save_directions(directions_path("pca_all_steps"), result.all_steps)
        rows = step.spectrum_rows(result)
        title = "PCA explained variance ratio"
        tracker.plot(PCA_SPECTRUM, rows, x="component", y=["all_steps", "per_step_mean"], title=title)
        per_step = [{"step": t, "component": k, "ratio": ratio}
                    for k, ratios in enumerate(result.per_step.extra["explained_variance_ratio"])
                    for t, ratio in enumerate(ratios)]  # fmt: skip
        tracker.lines("spectrum_per_step", per_step, x="component", y="ratio", series=("step",),
                      title="PCA explained variance ratio per step")  # fmt: skip
        tracker.metrics(PCA_METRICS, {"explained_variance_all_steps": sum(row["all_steps"] for row in rows)})


if __name__ == "__main__":
    run_main(main)
