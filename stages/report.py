"""DVC stage ``report``: one self-contained HTML page of the study (report/index.html, pipeline/steps/report.py)."""

from pipeline.io.errors import run_main
from pipeline.io.tracking import Tracker
from pipeline.steps.report import build_report, write_report
from pipeline.steps.sections import stage_params

OUTPUT = "report/index.html"


def main() -> None:
    """Read the study's outputs from the working directory (missing ones are noted on the page); write the page."""
    with Tracker.of(stage_params("report")) as tracker:
        write_report(OUTPUT, build_report("."))
        tracker.html("page", OUTPUT)


if __name__ == "__main__":
    run_main(main)
