"""The zero-shot CLIP labeller (``classifier=clip``): attributes named by prompts, for faces, churches or any
prompt a model was sampled with.

Each attribute is a set of positive and a set of negative prompts. Their text embeddings are L2-normalised,
averaged per set and renormalised (CLIP's prompt ensembling), giving unit vectors p and n; an image's logit is

    logit = s * (cos(image, p) - cos(image, n)),

with s CLIP's own temperature (``logit_scale.exp()``, 100 for the OpenAI models), which is exactly the log-odds
of the two-way softmax over {p, n} that CLIP's zero-shot classification computes. The label step then
calibrates these logits on the samples' own scores (:mod:`pipeline.labellers.calibration`).

Weights come from a local folder or the Hugging Face cache only (``hf download <id>`` once, on a machine with
internet); nothing is downloaded here and no remote code is run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.io.errors import ConfigError, ModelNotFoundError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A CLIP checkpoint's weights, in the order transformers prefers them."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
"""A CLIP tokenizer's vocabulary (the fast or the slow layout); without one transformers builds an empty tokenizer."""
REQUIRED_FILES = ("config.json", "preprocessor_config.json")


@dataclass
class PromptAttribute:
    """One attribute of the CLIP labeller: its column name in the label table and its two prompt sets."""

    name: str = ""
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


def check_attributes(attributes: Sequence[PromptAttribute]) -> None:
    """Refuse an empty attribute list, an unnamed or repeated attribute, or an empty prompt set (one line
    naming ``classifier.attributes``)."""
    if not attributes:
        raise ConfigError("params: classifier.attributes=[]: the clip labeller needs at least one attribute")
    names = [attribute.name for attribute in attributes]
    for index, attribute in enumerate(attributes):
        if not attribute.name or names.count(attribute.name) > 1:
            raise ConfigError(
                f"params: classifier.attributes.{index}.name={attribute.name!r}: must be unique, non-empty"
            )
        for side in ("positive", "negative"):
            if not getattr(attribute, side) or not all(getattr(attribute, side)):
                raise ConfigError(
                    f"params: classifier.attributes.{index}.{side}: '{attribute.name}' needs non-empty prompts"
                )


def missing_clip_files(source: str) -> str | None:
    """What of a CLIP checkpoint is absent at ``source`` (a folder, or a hub id looked up in the Hugging Face
    cache without network): a short phrase, or None when its config, preprocessing config, weights and tokenizer
    vocabulary are there.
    Touches only the file system (milliseconds)."""
    folder = Path(source).expanduser()
    names = (*REQUIRED_FILES, *WEIGHT_FILES, *TOKENIZER_FILES)
    if folder.is_dir():
        present = {name for name in names if (folder / name).is_file()}
    elif HUB_ID.fullmatch(source):
        from huggingface_hub import try_to_load_from_cache

        present = {name for name in names if isinstance(try_to_load_from_cache(source, name), str)}
    else:
        return "no such folder, and not a hub id 'owner/name'"
    missing = [name for name in REQUIRED_FILES if name not in present]
    for alternatives in (WEIGHT_FILES, TOKENIZER_FILES):
        if not present & set(alternatives):
            missing.append(" or ".join(alternatives))
    return f"{', '.join(missing)} not found locally" if missing else None


@dataclass(frozen=True)
class ClipPreprocessing:
    """CLIP's image preprocessing, from its ``preprocessor_config.json``: resize the shortest side to
    ``shortest_edge`` (bicubic), centre-crop ``crop`` (height, width), normalise with ``mean`` and ``std``."""

    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClipPreprocessing:
        """Read the keys of a CLIPImageProcessor config (``size`` and ``crop_size`` as ints or dicts)."""
        size, crop = config["size"], config.get("crop_size", config["size"])
        if isinstance(size, dict):
            size = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        return cls(int(size), (int(crop[0]), int(crop[1])), tuple(config["image_mean"]), tuple(config["image_std"]))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel values [N, 3, crop_h, crop_w] of images [N, 3, H, W] in [0, 1] (batched, in torch)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"classifier input: expected images [N, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        ratio = self.shortest_edge / min(height, width)
        size = (max(self.crop[0], round(height * ratio)), max(self.crop[1], round(width * ratio)))
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]].clamp(0.0, 1.0)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        return (images - mean) / images.new_tensor(self.std).view(1, 3, 1, 1)


class ClipLabeller(nn.Module):
    """CLIP's image tower with one prompt-pair direction per attribute.

    ``forward``: images [N, 3, H, W] in [0, 1] -> logits [N, A] (order ``attribute_names``, see the module
    docstring); ``features``: the L2-normalised image embeddings [N, num_features] (CLIP's projection width).
    """

    def __init__(
        self,
        vision_model: nn.Module,
        visual_projection: nn.Module,
        directions: torch.Tensor,
        logit_scale: float,
        attribute_names: Sequence[str],
        preprocessing: ClipPreprocessing,
    ):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.register_buffer("directions", directions)  # [A, D]: p - n of each attribute
        self.logit_scale = logit_scale
        self.attribute_names = tuple(attribute_names)
        self.preprocessing = preprocessing
        self.num_features = directions.shape[1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [N, D] of images [N, 3, H, W] in [0, 1]."""
        dtype = self.directions.dtype
        pixels = self.preprocessing(images.to(dtype))
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Attribute logits [N, A]: ``logit_scale`` times the cosine difference to the two prompt sets."""
        return self.logit_scale * self.features(images) @ self.directions.T


def _prompt_embedding(model: nn.Module, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """The renormalised mean of the unit text embeddings of ``prompts``: [D]."""
    tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    return F.normalize(F.normalize(model.text_projection(pooled), dim=-1).mean(dim=0), dim=0)


def load_clip_labeller(
    source: str, attributes: Sequence[PromptAttribute], device: str | torch.device = "cpu"
) -> ClipLabeller:
    """The CLIP labeller of the checkpoint at ``source`` (a folder, or a hub id in the local Hugging Face
    cache) for ``attributes``; eval mode, gradients off, on ``device``. The text tower is used once, for the
    prompt embeddings, and dropped."""
    from transformers import AutoTokenizer, CLIPModel

    check_attributes(attributes)
    missing = missing_clip_files(source)
    if missing:
        raise ModelNotFoundError(f"classifier.path '{source}': {missing}; {download_hint(source)}")
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        preprocessing = ClipPreprocessing.from_config(_preprocessor_config(source))
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelNotFoundError(f"classifier.path '{source}': not a loadable CLIP checkpoint ({reason})") from error
    with torch.no_grad():
        directions = torch.stack(
            [
                _prompt_embedding(model, tokenizer, attribute.positive)
                - _prompt_embedding(model, tokenizer, attribute.negative)
                for attribute in attributes
            ]
        )
    labeller = ClipLabeller(
        model.vision_model,
        model.visual_projection,
        directions,
        model.logit_scale.exp().item(),
        [attribute.name for attribute in attributes],
        preprocessing,
    )
    return labeller.to(device).eval().requires_grad_(False)


def _preprocessor_config(source: str) -> dict[str, Any]:
    folder = Path(source).expanduser()
    if folder.is_dir():
        return json.loads((folder / "preprocessor_config.json").read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source, "preprocessor_config.json", local_files_only=True)).read_text())


def download_hint(source: str) -> str:
    """How to get a CLIP checkpoint: ``hf download <id>`` for a hub id, a folder otherwise."""
    if HUB_ID.fullmatch(source) and not Path(source).expanduser().exists():
        return f"download it once with: hf download {source}"
    return (
        "set classifier.path to a CLIP folder (config.json, preprocessor_config.json, weights, tokenizer) or a hub id"
    )
