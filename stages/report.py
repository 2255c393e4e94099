"""DVC stage ``report``: one self-contained HTML page of the study (report/index.html, pipeline/steps/report.py)."""

from pipeline.io.artefacts import REPORT
from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps.report import build_report, write_report
from pipeline.steps.sections import stage_params


def main() -> None:
    """Read the study's outputs from the working directory (missing ones are noted on the page); write the page."""
    with Tracker.of(stage_params("report")) as tracker:
        write_report(REPORT, build_report("."))
        tracker.html("page", REPORT)


if __name__ == "__main__":
    run_main(main)
