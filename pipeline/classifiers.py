"""The attribute-classifier registry used to label samples (``conf/classifier/``).

Every registered classifier is an ``nn.Module`` that takes images in [0, 1], shape [N, 3, H, W], and
returns one logit per attribute [N, A], with ``attribute_names`` (A names), ``features(images)``
[N, num_features] (the FID/KID feature extractor) and ``num_features``.

- ``toyfaces``: the project's CNN on ToyFaces (weights committed under ``models/toyfaces/classifier``).
- ``celeba_attributes``: the 40-attribute CelebA predictor of paper A (:mod:`pipeline.labellers.celeba`; a
  ResNet-50 with 80 outputs read as 40 two-way softmaxes; the logit is log P(present) - log P(absent)). Needs
  the optional ``torchvision`` extra and weights from a local file (safetensors, or a PyTorch state dict loaded
  with ``weights_only=True``) or a URL fetched once into the torch hub cache.
- ``clip``: zero-shot attributes named by prompt pairs (:mod:`pipeline.labellers.clip`), for any model;
  its scores are calibrated on the samples by the label step (``calibration: mixture``).
- ``folder``: the attribute CNN trained on the user's labelled images by the ``train_classifier`` stage
  (:mod:`pipeline.labellers.cnn`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pipeline.io.artefacts import LABEL_METRICS, TOY_CLASSIFIER
from pipeline.io.errors import ConfigError, ModelNotFoundError, PipelineError
from pipeline.io.validation import require
from pipeline.labellers.calibration import CALIBRATIONS, AttributeCalibration, CalibratedLabeller
from pipeline.labellers.celeba import CelebAAttributeClassifier
from pipeline.labellers.clip import (
    PromptAttribute,
    check_attributes,
    download_hint,
    load_clip_labeller,
    missing_clip_files,
)
from pipeline.labellers.cnn import AttributeCNN
from pipeline.toyfaces.classifier import ToyFacesClassifier

CLASSIFIERS = ("toyfaces", "celeba_attributes", "clip", "folder")


@dataclass
class ClassifierConfig:
    """Which classifier labels the samples, and where its weights are.

    ``path`` is a folder (toyfaces, folder), a weights file (celeba_attributes) or a CLIP folder or hub id
    (clip). For celeba_attributes only: ``url`` is used when ``path`` is empty, and ``input_size`` is the side
    images are resized to. For clip only: ``attributes``, each a name with positive and negative prompts.
    ``calibration`` (any classifier): how the label step calibrates the label table on the samples' own scores,
    ``none`` or ``mixture`` (:mod:`pipeline.labellers.calibration`).
    """

    name: str = "toyfaces"
    path: str = TOY_CLASSIFIER
    url: str = ""
    input_size: int = 32
    attributes: list[PromptAttribute] = field(default_factory=list)
    calibration: str = "none"

    def __post_init__(self) -> None:
        rule = f"must be one of {', '.join(CALIBRATIONS)}"
        require(self.calibration in CALIBRATIONS, "classifier.calibration", self.calibration, rule)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a PyTorch file read with ``weights_only=True``.

    A checkpoint that wraps its weights (``{"state_dict": ...}``) or prefixes them (``module.``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"classifier weights '{path}': no such file")
    try:
        state = (
            load_file(str(path))
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as error:
        raise ModelNotFoundError(f"classifier weights '{path}': unreadable ({_load_failure(error)})") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_failure(error: Exception) -> str:
    """One line saying why a weights file did not load.

    torch's weights-only refusal is a multi-line text whose first lines advise retrying with
    ``weights_only=False`` (arbitrary code execution, which this project never does); keep only its cause.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if not lines[0].startswith("Weights only load failed"):
        return lines[0]
    causes = [
        line.removeprefix("WeightsUnpickler error:").strip().split(". Please use")[0]
        for line in lines
        if "weights_only" not in line and not line.startswith(("Weights only load failed", "Check the documentation"))
    ]
    cause = next((line for line in causes if line), "")
    return f"not a plain state dict; the weights-only loader refused it: {cause or 'unsupported content'}"


TRAINED_BY = {
    "toyfaces": ("ToyFaces classifier", "train_toy_classifier"),
    "folder": ("trained classifier", "train_classifier"),
}
"""The classifiers the project trains into a folder (config.json, model.safetensors): what the missing one is
called, and the stage that trains it."""


def check_classifier(cfg: ClassifierConfig) -> None:
    """Preflight: raise a one-line error naming the key and the fix when the configured classifier cannot be
    loaded on this machine (unknown name, weights missing, optional extra not installed), without loading it
    (milliseconds), so a run stops before its expensive stages."""
    if cfg.name in TRAINED_BY:
        kind, stage = TRAINED_BY[cfg.name]
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ModelNotFoundError(
                f"classifier.path '{cfg.path}': no {kind} there (config.json and model.safetensors); "
                f"train it with: dvc repro {stage}"
            )
        return
    if cfg.name == "celeba_attributes":
        if importlib.util.find_spec("torchvision") is None:
            raise ModelNotFoundError("classifier 'celeba_attributes' needs torchvision: pip install -e '.[celeba]'")
        if cfg.path and not Path(cfg.path).is_file():
            raise ModelNotFoundError(
                f"classifier.path '{cfg.path}': no such file; the README ('Labellers') says where CelebA attribute "
                "weights come from"
            )
        if not cfg.path and not cfg.url:
            raise ConfigError("classifier.path and classifier.url are both empty for 'celeba_attributes'")
        return
    if cfg.name == "clip":
        check_attributes(cfg.attributes)
        missing = missing_clip_files(cfg.path)
        if missing:
            raise ModelNotFoundError(f"classifier.path '{cfg.path}': {missing}; {download_hint(cfg.path)}")
        return
    raise ConfigError(f"classifier.name '{cfg.name}': unknown; expected one of {', '.join(CLASSIFIERS)}")


def load_classifier(cfg: ClassifierConfig, device: str | torch.device = "cpu") -> nn.Module:
    """Build the configured classifier with its weights, in eval mode with gradients off, on ``device``."""
    if cfg.name == "toyfaces":
        try:
            return ToyFacesClassifier.load(cfg.path, device=device)
        except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as error:
            if isinstance(error, PipelineError):  # a missing folder, already named
                raise
            # a truncated model.safetensors, a damaged config.json or weights of another architecture
            raise ModelNotFoundError(f"classifier folder '{cfg.path}': unreadable ({_load_failure(error)})") from error
    if cfg.name == "folder":
        check_classifier(cfg)
        try:
            return AttributeCNN.load(cfg.path, device=device)
        except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
            raise ModelNotFoundError(f"classifier folder '{cfg.path}': unreadable ({_load_failure(error)})") from error
    if cfg.name == "clip":
        return load_clip_labeller(cfg.path, cfg.attributes, device)
    if cfg.name == "celeba_attributes":
        model = CelebAAttributeClassifier(cfg.input_size)
        if cfg.path:
            state = read_state_dict(cfg.path)
        elif cfg.url:
            state = torch.hub.load_state_dict_from_url(cfg.url, map_location="cpu", weights_only=True)
        else:
            raise ConfigError("classifier.path and classifier.url are both empty for 'celeba_attributes'")
        backbone_state = {key.removeprefix("backbone."): value for key, value in state.items()}
        try:
            model.backbone.load_state_dict(backbone_state)
        except RuntimeError as error:
            raise ModelNotFoundError(
                f"classifier weights '{cfg.path or cfg.url}': not a ResNet-50 with 80 outputs "
                f"({str(error).splitlines()[0]})"
            ) from error
        return model.to(device).eval().requires_grad_(False)
    raise ConfigError(f"classifier.name '{cfg.name}': unknown; expected one of {', '.join(CLASSIFIERS)}")
"""Where the label stage writes its metrics, among them the label table's calibration (``calibration``)."""


def load_judge(
    cfg: ClassifierConfig, device: str | torch.device = "cpu", label_metrics: str | Path = LABEL_METRICS
) -> nn.Module:
    """The classifier that judges edits: :func:`load_classifier`, and with ``cfg.calibration`` other than "none"
    wrapped in the label table's calibration read from ``label_metrics`` (the label stage's fits), so an edit's
    decision uses the same decision point as the labels the directions were estimated from."""
    classifier = load_classifier(cfg, device)
    if cfg.calibration == "none":
        return classifier
    path = Path(label_metrics)
    try:
        fits = json.loads(path.read_text())["calibration"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"classifier.calibration={cfg.calibration!r}: no calibration in '{path}'; run `dvc repro label` first "
            "(or set classifier.calibration=none)"
        ) from None
    missing = [name for name in classifier.attribute_names if name not in fits]
    if missing:
        raise ConfigError(f"'{path}': no calibration of {missing}; rerun `dvc repro label` with this classifier")
    calibrations = [AttributeCalibration(**fits[name]) for name in classifier.attribute_names]
    return CalibratedLabeller(classifier, calibrations).to(device).eval().requires_grad_(False)


@torch.no_grad()
def classify_logits(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Attribute logits [N, A] of images [N, 3, H, W] in [0, 1].

    Edit effects are measured on raw logits: the logit of a sigmoid probability saturates in float32
    (p rounds to 1 near logit 17), which would hide the change of an already confident attribute.
    """
    device = next(classifier.parameters()).device
    return torch.cat([classifier(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])


def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Attribute probabilities [N, A] of images [N, 3, H, W] in [0, 1] (sigmoid of the classifier's logits)."""
    return torch.sigmoid(classify_logits(classifier, images, batch_size))

