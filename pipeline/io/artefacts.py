"""Every artefact path of the study, defined once: the files and folders its stages write and read, relative to
the study's root (the working directory of ``dvc repro`` and of every stage).

``dvc.yaml`` declares the same paths as its stages' outs, metrics, plots and deps; ``tests/test_dag.py`` checks
that the two agree: every path here is declared in ``dvc.yaml`` (and each stage declares the paths its script,
step module and package name), and every path ``dvc.yaml`` declares is defined here or comes from params (such as
``${train_classifier.images}``). Stages and library modules take their paths from here, never spell them; the
contents of each file are described in docs/outputs.md.

Per-method paths are functions of the method name (``directions_path("supervised")``); with ``"${item}"`` they give
the templates of the ``foreach`` stages ``preview@${item}`` and ``evaluate@${item}``.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- trained models

TOY_MODEL = "models/toyfaces/ddpm"
"""The ToyFaces DDPM, a diffusers pipeline folder (``train_toy_model``, committed)."""
TOY_CLASSIFIER = "models/toyfaces/classifier"
"""The ToyFaces attribute CNN (``train_toy_classifier``, committed)."""
FOLDER_CLASSIFIER = "models/classifier"
"""The ``folder`` labeller's attribute CNN (``train_classifier``, committed)."""
TRAIN_TOY_MODEL_METRICS = "metrics/train_toy_model.json"
TRAIN_TOY_CLASSIFIER_METRICS = "metrics/train_toy_classifier.json"
TRAIN_CLASSIFIER_METRICS = "metrics/train_classifier.json"
TOY_QUALITY_METRICS = "metrics/toy_quality.json"
TOY_QUALITY_SAMPLES = "plots/toy_quality_samples.png"
"""Generated samples beside world images (``toy_quality``)."""
TOY_DATASET_IMAGES = "data/toy_dataset/images"
"""The rendered ToyFaces image folder (``toy_dataset``), the default ``train_classifier.images``."""
TOY_DATASET_LABELS = "data/toy_dataset/labels.csv"
"""Its label table, the default ``train_classifier.labels``."""


def checkpoint_folder(stage: str) -> str:
    """The training checkpoints of a training stage, ``checkpoints/<stage>``: resumable state (git-ignored), not a
    DVC output."""
    return f"checkpoints/{stage}"


# ---------------------------------------------------------------------------------------------- samples and labels

PREFLIGHT_CHECKS = "metrics/preflight.json"
"""What ``preflight`` checked (the same text after every successful run)."""
SAMPLES = "data/samples"
"""The samples store (``generate``)."""
GENERATE_METRICS = "metrics/generate.json"
LABELS = "data/labels.csv"
"""The label table (``label``)."""
LABEL_METRICS = "metrics/label.json"
"""Attribute frequencies and the label table's calibration, which the judge applies."""
HSTATS = "data/hstats.safetensors"
"""The statistics file (``hstats``)."""

# ---------------------------------------------------------------------------------------------- directions


def directions_path(method: str) -> str:
    """The directions file of ``method`` (a name of :data:`pipeline.directions.methods.REGISTRY`):
    ``directions/<method>.safetensors``."""
    return f"directions/{method}.safetensors"


PCA_SPECTRUM = "plots/pca_spectrum.csv"
PCA_METRICS = "metrics/pca.json"
SUPERVISED_METRICS = "metrics/supervised.json"
JACOBIAN_SPECTRUM = "plots/jacobian_spectrum.csv"
JACOBIAN_PREVIEW = "plots/jacobian_preview.png"
JACOBIAN_METRICS = "metrics/jacobian.json"
PULLBACK_SPECTRUM = "plots/pullback_spectrum.csv"
PULLBACK_PSD = "plots/pullback_psd.csv"
PULLBACK_TANGENT_DISTANCE = "plots/pullback_tangent_distance.csv"
PULLBACK_PREVIEW = "plots/pullback_preview.png"
PULLBACK_DETAILS = "plots/pullback_details.json"
PULLBACK_METRICS = "metrics/pullback.json"

# ---------------------------------------------------------------------------------------------- judged edits

PREVIEWS = "plots/preview"
"""The folder of every method's preview (each written by its ``preview@<method>`` stage)."""


def preview_folder(method: str) -> str:
    """Where the ``preview`` stage of ``method`` writes its grid and judge's entries: ``plots/preview/<method>``."""
    return f"{PREVIEWS}/{method}"


def preview_grid(method: str) -> str:
    """The labelled, verdict-framed preview grid of ``method``: ``plots/preview/<method>/grid.png``."""
    return f"{preview_folder(method)}/grid.png"


def preview_details(method: str) -> str:
    """The judge's entries of ``method``'s preview: ``plots/preview/<method>/judge.json``."""
    return f"{preview_folder(method)}/judge.json"


EVALUATIONS = "plots/evaluate"
"""The folder of every method's evaluation (each written by its ``evaluate@<method>`` stage)."""


def evaluation_folder(method: str) -> str:
    """Where the ``evaluate`` stage of ``method`` writes its grid, details and records: ``plots/evaluate/<method>``."""
    return f"{EVALUATIONS}/{method}"


def evaluation_grid(method: str) -> str:
    """The labelled, verdict-framed edit grid of ``method``: ``plots/evaluate/<method>/grid.png``."""
    return f"{evaluation_folder(method)}/grid.png"


def evaluation_details(method: str) -> str:
    """The judge's entries of ``method``: ``plots/evaluate/<method>/judge.json``."""
    return f"{evaluation_folder(method)}/judge.json"


def records_path(method: str) -> str:
    """The per-sample records of ``method``'s evaluation: ``plots/evaluate/<method>/records.safetensors``."""
    return f"{evaluation_folder(method)}/records.safetensors"


EVALUATE_METRICS = "metrics/evaluate.json"
"""The headline figures of every method (``evaluate_summary``)."""
EVALUATE_SUMMARY = "plots/evaluate_summary.json"
"""The full summary: per method, per attribute, conditional against plain."""
EVALUATE_CURVES = "plots/evaluate_curves.csv"
EVALUATE_METHODS = "plots/evaluate_methods.csv"
"""The method table at operating scales."""
SUPERVISED_STUDY = "plots/supervised_study"
"""The ``supervised_study`` stage's tables and judge's entries."""
STUDY_VARIANTS = f"{SUPERVISED_STUDY}/variants.csv"
STUDY_SAMPLES = f"{SUPERVISED_STUDY}/samples.csv"
STUDY_DETAILS = f"{SUPERVISED_STUDY}/judge.json"
EDIT_FOLDER = "plots/edit"
"""The ``edit`` stage's edits of the user's images (``grid.png``, ``edits.json``, ``images/``)."""
EDIT_GRID = f"{EDIT_FOLDER}/grid.png"
EDIT_DETAILS = f"{EDIT_FOLDER}/edits.json"

# ---------------------------------------------------------------------------------------------- the report

METRICS_FOLDER = "metrics"
"""Every stage's metrics JSON (the report shows them all)."""
REPORT = "report/index.html"
"""The study report, one self-contained HTML page."""
