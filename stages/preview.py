"""DVC stage ``preview``: edit grids of held-out samples for every directions file, and the supervised check."""

from pipeline import study
from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.directions import Expected, load_directions
from pipeline.io.images import save_png
from pipeline.diffusion.models import resolve_device
from pipeline.io.params import load_params, load_section, load_value
from pipeline.io.tracking import LoggingConfig, Tracker

METHODS = ("pca_per_step", "pca_all_steps", "supervised", "supervised_conditional", "noise_supervised")
DIRECTIONS = "directions/{method}.safetensors"
GRID = "plots/preview/{method}.png"
METRICS = "metrics/preview.json"


def main() -> None:
    """Read params.yaml and the directions files; write one grid per method and metrics/preview.json."""
    params = load_params()
    model_cfg = load_section("model", study.ModelConfig, params)
    sampler = load_section("sampler", study.SamplerConfig, params)
    supervised_cfg = load_section("directions", study.DirectionsConfig, params).supervised
    cfg = load_section("preview", study.PreviewConfig, params)
    device = str(resolve_device(load_value("device", str, params)))
    tracked = {key: params[key] for key in ("model", "sampler", "preview")}
    with Tracker("preview", load_section("logging", LoggingConfig, params), tracked) as tracker:
        model = study.open_model(model_cfg, device)
        classifier = load_classifier(load_section("classifier", ClassifierConfig, params), device)
        expect = Expected(model_id=model_cfg.source, num_steps=sampler.steps)
        files = {method: load_directions(DIRECTIONS.format(method=method), expect) for method in METHODS}
        grid_samples = study.held_out(model, sampler, cfg.seed_offset, cfg.grid_samples)
        for method, directions in files.items():
            picture = study.preview_grid(model, directions, cfg, sampler, model_cfg.hspace_location, grid_samples)
            save_png(picture, GRID.format(method=method), upscale=2)
            tracker.image(f"grid/{method}", picture, caption=", ".join(directions.names[: cfg.max_directions]))

        names = list(classifier.attribute_names)
        check_samples = study.held_out(model, sampler, cfg.seed_offset, cfg.check_samples)
        baseline = (
            study.classify_logits(
                classifier,
                study.decode_images(model, check_samples.x_T, check_samples.noise, sampler, model_cfg.hspace_location),
            )
        )
        reports = {}
        for method in ("supervised", "supervised_conditional"):
            effects = study.attribute_effects(
                model, classifier, files[method], cfg.check_scale, check_samples, sampler,
                model_cfg.hspace_location, baseline,
            )  # fmt: skip
            reports[method] = study.supervised_check(names, files[method], effects, baseline)
        reports["conditional"] = study.conditional_check(
            reports["supervised"], reports["supervised_conditional"], supervised_cfg.conditional
        )
        reports["min_moved_supervised"] = min(entry["moved"] for entry in reports["supervised"].values())
        tracker.metrics(METRICS, reports)


if __name__ == "__main__":
    main()
