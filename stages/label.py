"""DVC stage ``label``: score every stored sample with the configured attribute classifier (data/labels.csv)."""

from pipeline import study
from pipeline.classifiers import ClassifierConfig, load_classifier
from pipeline.models import resolve_device
from pipeline.params import load_params, load_section, load_value
from pipeline.store import open_store
from pipeline.tracking import LoggingConfig, Tracker

SAMPLES = "data/samples"
LABELS = "data/labels.csv"
METRICS = "metrics/label.json"


def main() -> None:
    """Read params.yaml, classify x_0 of every sample, write the label table and attribute frequencies."""
    params = load_params()
    cfg = load_section("classifier", ClassifierConfig, params)
    device = resolve_device(load_value("device", str, params))
    with Tracker(
        "label", load_section("logging", LoggingConfig, params), {"classifier": params["classifier"]}
    ) as tracker:
        classifier = load_classifier(cfg, device)
        store = open_store(SAMPLES)
        scores = study.label(store, classifier)
        study.write_labels(LABELS, store.seeds, classifier.attribute_names, scores)
        frequencies = (scores > 0.5).float().mean(dim=0).tolist()
        tracker.metrics(METRICS, {"frequency": dict(zip(classifier.attribute_names, frequencies, strict=True))})


if __name__ == "__main__":
    main()
