"""DVC stage ``preflight``: the first stage, checking in seconds that the run's resources and settings are all
there (metrics/preflight.json lists what it checked); ``generate`` depends on it, so nothing expensive starts
before it passes."""

from pipeline.io.artefacts import PREFLIGHT_CHECKS
from pipeline.io.errors import run_main
from pipeline.io.files import write_json
from pipeline.io.launch import LaunchConfig
from pipeline.io.tracking import Tracker
from pipeline.steps import preflight as step
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read and validate params.yaml, run the checks, write the list of what passed."""
    params = stage_params("preflight")
    with Tracker.of(params) as tracker:
        sections = {key: params[key] for key in step.PARAMS}
        checked = step.run(sections, params.device, params.runtime("launch", LaunchConfig))
        write_json(PREFLIGHT_CHECKS, checked)
        tracker.table("checks", [{"check": key, "passed": what} for key, what in checked.items()])
        tracker.summary({"checks_passed": len(checked)})
    print(f"preflight: {len(checked)} checks passed ({PREFLIGHT_CHECKS})")


if __name__ == "__main__":
    run_main(main)
