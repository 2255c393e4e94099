"""DVC stage ``jacobian``: image-specific Jacobian directions of held-out samples (directions/jacobian.safetensors)."""

from pipeline import study
from pipeline.io.files import stage_work
from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.directions import save_directions
from pipeline.io.images import save_png
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.spectral_study import run_jacobian
from pipeline.toyfaces.world import ToyFacesConfig
from pipeline.io.tracking import LoggingConfig, Tracker

OUTPUT = "directions/{method}.safetensors"
PLOT = "plots/{name}.csv"
GRID = "plots/{name}_preview.png"
METRICS = "metrics/jacobian.json"


def main() -> None:
    """Read params.yaml; write the directions file, the spectrum plot, the preview grid and the metrics."""
    params = load_params()
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    cfg = load_section("directions", study.DirectionsConfig, params).jacobian
    preview = load_section("preview", study.PreviewConfig, params)
    device = str(resolve_device(load_value("device", str, params)))
    tracked = {key: params[key] for key in ("model", "sampler", "classifier", "toyfaces")}
    tracked |= {"jacobian": params["directions"]["jacobian"], "preview_scales": preview.scales}
    with Tracker("jacobian", load_section("logging", LoggingConfig, params), tracked) as tracker:
        classifier_cfg = load_section("classifier", ClassifierConfig, params)
        work = stage_work("jacobian", {**tracked, "device": device}, [model_cfg.source, classifier_cfg.path])
        model = study.open_model(model_cfg, device)
        classifier = load_classifier(classifier_cfg, device)
        world = load_section("toyfaces", ToyFacesConfig, params)
        result = run_jacobian(
            model, cfg, sampler, model_cfg.hspace_location, classifier, world, preview_scales=preview.scales, work=work
        )
        for method, directions in result.directions.items():
            save_directions(OUTPUT.format(method=method), directions)
        for name, rows in result.plots.items():
            tracker.plot(PLOT.format(name=name), rows, x="step", y="sigma_0", title="Jacobian singular values")
        for name, picture in result.pictures.items():
            save_png(picture, GRID.format(name=name), upscale=2)
            tracker.image(f"grid/{name}", picture, caption="rows: (sample, k); columns: preview.scales")
        tracker.metrics(METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    main()
