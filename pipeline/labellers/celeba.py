"""The 40-attribute CelebA predictor of paper A (classifier ``celeba_attributes``): a ResNet-50 with 80 outputs read
as 40 two-way softmaxes, the logit being log P(present) - log P(absent). Needs the optional ``torchvision`` extra;
:func:`pipeline.classifiers.load_classifier` builds it and loads its weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.io.errors import ConfigError, ModelNotFoundError

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


class CelebAAttributeClassifier(nn.Module):
    """ResNet-50 with 80 outputs read as (40, 2) softmaxes: logits [N, 40] = out[..., 1] - out[..., 0].

    Input images [N, 3, H, W] in [0, 1] are area-resized to ``input_size`` and mapped to [-1, 1], as the
    reference predictor expects. ``features`` is the 2048-d pooled activation.
    """

    attribute_names = CELEBA_ATTRIBUTES
    num_features = 2048

    def __init__(self, input_size: int = 256):
        super().__init__()
        try:
            from torchvision.models import resnet50
        except ImportError as error:
            raise ModelNotFoundError(
                "classifier 'celeba_attributes' needs torchvision: pip install -e '.[celeba]'"
            ) from error
        self.backbone = resnet50(weights=None, num_classes=2 * len(CELEBA_ATTRIBUTES))
        self.input_size = input_size

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"classifier input: expected images [N, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="area")
        return images * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone activations [N, 2048]."""
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(self._prepare(images)))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Attribute logits [N, 40] (order ``attribute_names``)."""
        pairs = self.backbone.fc(self.features(images)).view(-1, len(CELEBA_ATTRIBUTES), 2)
        log_probabilities = pairs.log_softmax(dim=-1)
        return log_probabilities[..., 1] - log_probabilities[..., 0]
