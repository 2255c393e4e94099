"""The classifier registry: the committed ToyFaces classifier, the CelebA predictor, safe weight loading."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pipeline.classifiers import ClassifierConfig, load_classifier, read_state_dict
from pipeline.io.errors import ConfigError, ModelNotFoundError
from pipeline.labellers.celeba import CELEBA_ATTRIBUTES, CelebAAttributeClassifier
from pipeline.toyfaces.world import ToyFacesConfig, make_batch

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def test_committed_toyfaces_classifier_is_accurate_on_fresh_faces():
    classifier = load_classifier(ClassifierConfig(path=str(ROOT / "models/toyfaces/classifier")))
    images, factors = make_batch(range(50_000_000, 50_000_512), ToyFacesConfig())
    with torch.no_grad():
        accuracy = ((classifier(images) > 0).float() == factors.binary).float().mean(dim=0)
        features = classifier.features(images[:4])
    assert accuracy.min().item() >= 0.97, dict(zip(classifier.attribute_names, accuracy.tolist(), strict=True))
    assert features.shape == (4, classifier.num_features)
    assert not any(p.requires_grad for p in classifier.parameters())


def test_unknown_classifier_and_missing_weights_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"classifier\.name 'resnet'"):
        load_classifier(ClassifierConfig(name="resnet"))
    with pytest.raises(ModelNotFoundError, match=r"missing config\.json"):
        load_classifier(ClassifierConfig(path=str(tmp_path)))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_state_dicts_are_read_safely_and_unwrapped(tmp_path):
    weights = {"module.fc.weight": torch.ones(2, 2)}
    torch.save({"state_dict": weights}, tmp_path / "ckpt.pth")
    assert list(read_state_dict(tmp_path / "ckpt.pth")) == ["fc.weight"]
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ModelNotFoundError) as error:
        read_state_dict(tmp_path / "truncated.safetensors")
    assert "unreadable" in str(error.value) and "\n" not in str(error.value)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"weights": torch.ones(1), "payload": Path("x")}, tmp_path / "unsafe.pt")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        read_state_dict(tmp_path / "unsafe.pt")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs the optional torchvision extra")
def test_celeba_predictor_loads_random_weights_and_gives_40_logits(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = CelebAAttributeClassifier(input_size=64)
    save_file({k: v.contiguous() for k, v in reference.backbone.state_dict().items()}, tmp_path / "w.safetensors")
    model = load_classifier(
        ClassifierConfig(name="celeba_attributes", path=str(tmp_path / "w.safetensors"), input_size=64)
    )
    images = torch.rand(2, 3, 80, 80)
    logits = model(images)
    assert logits.shape == (2, len(CELEBA_ATTRIBUTES))
    assert model.features(images).shape == (2, 2048)
    torch.testing.assert_close(logits, reference.eval()(images))


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the message shown without torchvision")
def test_celeba_predictor_without_torchvision_says_how_to_install():
    with pytest.raises(ModelNotFoundError, match=r"pip install -e '\.\[celeba\]'"):
        load_classifier(ClassifierConfig(name="celeba_attributes"))
