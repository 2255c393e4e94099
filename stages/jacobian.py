"""DVC stage ``jacobian``: image-specific Jacobian directions of held-out samples (directions/jacobian.safetensors)."""

from pipeline.classifiers import load_classifier
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import save_directions
from pipeline.directions.masks import check_mask_classifier
from pipeline.io.artefacts import JACOBIAN_METRICS, JACOBIAN_PREVIEW, JACOBIAN_SPECTRUM, directions_path
from pipeline.io.errors import run_main
from pipeline.io.files import stage_work
from pipeline.io.images import save_png
from pipeline.io.tracking import Tracker
from pipeline.steps import jacobian as step
from pipeline.steps.sections import stage_params

PLOTS = {"jacobian_spectrum": JACOBIAN_SPECTRUM}
"""Where each plot of the step's result is written."""
PICTURES = {"jacobian": JACOBIAN_PREVIEW}
"""Where each picture of the step's result is written."""


def main() -> None:
    """Read params.yaml; write the directions file, the spectrum plot, the preview grid and the metrics."""
    params = stage_params("jacobian")
    model_cfg, classifier_cfg, cfg = params["model"], params["classifier"], params["directions.jacobian"]
    check_mask_classifier(cfg.mask, classifier_cfg.name)  # before loading anything
    device = str(resolve_device(params.device))
    with Tracker.of(params) as tracker:
        work = stage_work("jacobian", {**params.tracked, "device": device}, [model_cfg.source, classifier_cfg.path])
        model = open_model(model_cfg, device)
        classifier = load_classifier(classifier_cfg, device)
        result = step.run(
            model, cfg, params["sampler"], model_cfg.hspace_location, classifier,
            params["toyfaces"], preview_scales=params["preview.scales"], work=work,
        )  # fmt: skip
        for method, directions in result.directions.items():
            save_directions(directions_path(method), directions)
        for name, rows in result.plots.items():
            sigmas = [column for column in rows[0] if column.startswith("sigma_")]
            tracker.plot(PLOTS[name], rows, x="step", y=sigmas, title="Jacobian singular values")
            spectra = [{"step": row["step"], "k": k, "sigma": row[column]} for row in rows
                       for k, column in enumerate(sigmas)]  # fmt: skip
            tracker.lines(f"{name}_per_step", spectra, x="k", y="sigma", series=("step",),
                          title="Jacobian singular values per step")  # fmt: skip
        for name, picture in result.pictures.items():
            save_png(picture, PICTURES[name], upscale=2)
            tracker.image(f"grid/{name}", picture, caption="rows: (sample, k); columns: preview.scales")
        tracker.metrics(JACOBIAN_METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    run_main(main)
