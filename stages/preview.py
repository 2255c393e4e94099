"""DVC stage ``preview``: labelled edit grids of held-out samples for the PCA and supervised directions files,
each edit framed by the judge's verdict, and the judge's entries for them (plots/preview/judge.json)."""

from pipeline.classifiers import load_judge
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Expected, load_directions
from pipeline.io.artefacts import PREVIEW_DETAILS, directions_path, preview_grid
from pipeline.io.errors import run_main
from pipeline.io.files import write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import Tracker
from pipeline.steps import preview as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml and the directions files; write one grid per method and the judge's entries."""
    params = stage_params("preview")
    model_cfg, sampler = params["model"], params["sampler"]
    device = str(resolve_device(params.device))
    with Tracker.of(params) as tracker:
        model = open_model(model_cfg, device)
        classifier = load_judge(params["classifier"], device)
        expect = Expected(model_id=model_cfg.source, num_steps=sampler.steps)
        files = {method: load_directions(directions_path(method), expect) for method in step.METHODS}
        world = params["toyfaces"] if params["classifier"].name == "toyfaces" else None
        result = step.run(model, classifier, files, params["preview"], sampler, params["evaluate.broken"], world)
        for method, picture in result.grids.items():
            save_png(picture, preview_grid(method))
            tracker.image(f"grid/{method}", picture, caption=result.captions[method])
        write_json(PREVIEW_DETAILS, result.details)


if __name__ == "__main__":
    run_main(main)
