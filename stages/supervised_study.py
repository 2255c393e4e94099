"""DVC stage ``supervised_study``: supervised estimators, timestep windows and injections judged side by side, and
the few-samples curve (pipeline/steps/supervised_study.py)."""

from pipeline.classifiers import load_judge
from pipeline.data.hstats import load_hstats
from pipeline.data.labels import check_labels_match, read_labels
from pipeline.data.store import open_store
from pipeline.diffusion.models import open_model, resolve_device
from pipeline.io.artefacts import HSTATS, LABELS, SAMPLES, STUDY_DETAILS, STUDY_SAMPLES, STUDY_VARIANTS
from pipeline.io.errors import run_main
from pipeline.io.files import WorkCache, stage_work, write_json
from pipeline.io.tracking import Tracker
from pipeline.steps import supervised_study as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml, the store, labels and statistics; judge every arm; write the two tables and the judge's
    entries under plots/supervised_study/."""
    params = stage_params("supervised_study")
    model_cfg, classifier_cfg = params["model"], params["classifier"]
    device = str(resolve_device(params.device))
    world = params["toyfaces"] if classifier_cfg.name == "toyfaces" else None
    with Tracker.of(params) as tracker:
        store = open_store(SAMPLES)
        seeds, names, scores = read_labels(LABELS)
        check_labels_match(store, seeds)
        inputs = [model_cfg.source, classifier_cfg.path, SAMPLES, LABELS, HSTATS]
        shared = {key: value for key, value in params.tracked.items() if key != "supervised_study"}
        shared.update(device=device, study=params["supervised_study"].shared())
        works = []

        def work(arm: str, spec: dict) -> WorkCache:
            cache = stage_work(f"supervised_study/{arm}", {**shared, "arm": spec}, inputs)
            works.append(cache)
            return cache

        result = step.run(
            open_model(model_cfg, device), load_judge(classifier_cfg, device), store, load_hstats(HSTATS),
            names, scores, params["hstats"].threshold, params["sampler"], params["supervised_study"],
            params["evaluate.broken"], world, work,
        )  # fmt: skip
        tracker.plot(STUDY_VARIANTS, result.variants, x="variant", y="mean_clean_flip", title="Clean flip per variant")
        tracker.plot(STUDY_SAMPLES, result.samples, x="samples_per_side", y="mean_clean_flip", title="Few samples")
        write_json(STUDY_DETAILS, result.details)
        for cache in works:
            cache.clear()


if __name__ == "__main__":
    run_main(main)
