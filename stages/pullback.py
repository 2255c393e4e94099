"""DVC stage ``pullback``: local pullback bases in x_t, transport, global directions and their analyses."""

from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import save_directions
from pipeline.io import artefacts
from pipeline.io.errors import run_main
from pipeline.io.files import stage_work, write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import Tracker
from pipeline.steps import pullback as step
from pipeline.steps.sections import stage_params

PLOTS = {
    "pullback_spectrum": artefacts.PULLBACK_SPECTRUM,
    "pullback_psd": artefacts.PULLBACK_PSD,
    "pullback_tangent_distance": artefacts.PULLBACK_TANGENT_DISTANCE,
}
"""Where each plot of the step's result is written."""
PLOT_AXES = {
    "pullback_spectrum": ("index", "sigma", "Pullback singular values (one line per t)", ("t",)),
    "pullback_psd": ("t", "mean_frequency", "Mean spatial frequency of the basis (cycles/pixel)", ()),
    "pullback_tangent_distance": ("t", "grassmann_distance_x", "Grassmann distance of samples' tangent spaces", ()),
}
PICTURES = {"pullback": artefacts.PULLBACK_PREVIEW}
"""Where each picture of the step's result is written."""


def main() -> None:
    """Read params.yaml; write both directions files, three plots, the preview grid, the details and the metrics."""
    params = stage_params("pullback")
    model_cfg = params["model"]
    device = str(resolve_device(params.device))
    with Tracker.of(params) as tracker:
        work = stage_work("pullback", {**params.tracked, "device": device}, [model_cfg.source])
        model = open_model(model_cfg, device)
        result = step.run(model, params["directions.pullback"], params["sampler"], model_cfg.hspace_location, work=work)
        for method, directions in result.directions.items():
            save_directions(artefacts.directions_path(method), directions)
        for name, rows in result.plots.items():
            x, y, title, series = PLOT_AXES[name]
            tracker.plot(PLOTS[name], rows, x=x, y=y, title=title, series=series)
        for name, picture in result.pictures.items():
            save_png(picture, PICTURES[name], upscale=2)
            caption = "rows: own v_k, transported v_k, projected global v_0; columns: guidance scales"
            tracker.image(f"grid/{name}", picture, caption=caption)
        write_json(artefacts.PULLBACK_DETAILS, result.details)
        tracker.metrics(artefacts.PULLBACK_METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    run_main(main)
