"""DVC stage ``pullback``: local pullback bases in x_t, transport, global directions and their analyses."""

from pipeline import study
from pipeline.io.files import stage_work
from pipeline.directions import save_directions
from pipeline.io.images import save_png
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.spectral_study import run_pullback
from pipeline.io.tracking import LoggingConfig, Tracker

OUTPUT = "directions/{method}.safetensors"
PLOT = "plots/{name}.csv"
GRID = "plots/{name}_preview.png"
METRICS = "metrics/pullback.json"
PLOT_AXES = {
    "pullback_spectrum": ("index", "sigma", "Pullback singular values (rows per t)"),
    "pullback_psd": ("t", "mean_frequency", "Mean spatial frequency of the basis (cycles/pixel)"),
    "pullback_tangent_distance": ("t", "grassmann_distance_x", "Grassmann distance between samples' tangent spaces"),
}


def main() -> None:
    """Read params.yaml; write both directions files, three plots, the preview grid and the metrics."""
    params = load_params()
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    cfg = load_section("directions", study.DirectionsConfig, params).pullback
    device = str(resolve_device(load_value("device", str, params)))
    tracked = {"model": params["model"], "sampler": params["sampler"], "pullback": params["directions"]["pullback"]}
    with Tracker("pullback", load_section("logging", LoggingConfig, params), tracked) as tracker:
        work = stage_work("pullback", {**tracked, "device": device}, [model_cfg.source])
        model = study.open_model(model_cfg, device)
        result = run_pullback(model, cfg, sampler, model_cfg.hspace_location, work=work)
        for method, directions in result.directions.items():
            save_directions(OUTPUT.format(method=method), directions)
        for name, rows in result.plots.items():
            x, y, title = PLOT_AXES[name]
            tracker.plot(PLOT.format(name=name), rows, x=x, y=y, title=title)
        for name, picture in result.pictures.items():
            save_png(picture, GRID.format(name=name), upscale=2)
            caption = "rows: own v_k, transported v_k, projected global v_0; columns: guidance scales"
            tracker.image(f"grid/{name}", picture, caption=caption)
        tracker.metrics(METRICS, result.metrics)
        tracker.timings(result.timings)
        work.clear()


if __name__ == "__main__":
    main()
