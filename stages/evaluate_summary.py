"""DVC stage ``evaluate_summary``: the per-method evaluations gathered into the headline metrics/evaluate.json, the
full summary plots/evaluate_summary.json, the method table and the curves (pipeline/steps/evaluate_summary.py)."""

from pipeline.evaluation.records import load_records
from pipeline.io.artefacts import EVALUATE_CURVES, EVALUATE_METHODS, EVALUATE_METRICS, EVALUATE_SUMMARY, records_path
from pipeline.io.errors import run_main
from pipeline.io.files import write_json
from pipeline.io.tracking import Tracker
from pipeline.steps import evaluate_summary as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read params.yaml and every method's records; write the headline metrics, the full summary and two plots."""
    params = stage_params("evaluate_summary")
    cfg = params["evaluate"]
    with Tracker.of(params) as tracker:
        records = {method: load_records(records_path(method)) for method in cfg.methods}
        result = step.run(records, cfg)
        tracker.plot(
            EVALUATE_CURVES, result.curve_rows, x="scale", y="clean_flip", title="Clean flip vs signed scale",
            series=("method", "direction"),
        )  # fmt: skip
        tracker.plot(EVALUATE_METHODS, result.method_rows, x="method", y="mean_clean_flip", title="At operating scales")
        write_json(EVALUATE_SUMMARY, result.details)
        tracker.metrics(EVALUATE_METRICS, result.metrics)


if __name__ == "__main__":
    run_main(main)
