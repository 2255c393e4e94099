"""DVC stage ``preview`` (one per directions file, a ``foreach`` over ``preview.methods``): a labelled edit grid of
held-out samples for the file of the method given on the command line, each edit framed by the judge's verdict, and
the judge's entries for them (plots/preview/METHOD/)."""

import sys

from pipeline.classifiers import load_judge
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.directions import Expected, load_directions
from pipeline.io.artefacts import directions_path, preview_details, preview_grid
from pipeline.io.errors import ConfigError, run_main
from pipeline.io.files import write_json
from pipeline.io.images import save_png
from pipeline.io.tracking import Tracker
from pipeline.steps import preview as step
from pipeline.steps.sections import stage_params


def main(argv: list[str] | None = None) -> None:
    """``python -m stages.preview METHOD``: read params.yaml and the method's directions file; write its grid and
    the judge's entries under plots/preview/METHOD/."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise ConfigError("usage: python -m stages.preview METHOD (one of preview.methods)")
    method = args[0]
    params = stage_params("preview")
    cfg, model_cfg, sampler = params["preview"], params["model"], params["sampler"]
    if method not in cfg.methods:
        raise ConfigError(f"preview: method '{method}' is not in preview.methods ({', '.join(cfg.methods)})")
    device = str(resolve_device(params.device))
    with Tracker.of(params, f"preview@{method}") as tracker:
        expect = Expected(model_id=model_cfg.source, num_steps=sampler.steps)
        files = {method: load_directions(directions_path(method), expect)}  # a bad file fails before the model loads
        model = open_model(model_cfg, device)
        classifier = load_judge(params["classifier"], device)
        world = params["toyfaces"] if params["classifier"].name == "toyfaces" else None
        result = step.run(model, classifier, files, cfg, sampler, params["evaluate.broken"], world)
        save_png(result.grids[method], preview_grid(method))
        tracker.image("grid", result.grids[method], caption=result.captions[method])
        write_json(preview_details(method), result.details[method])


if __name__ == "__main__":
    run_main(main)
