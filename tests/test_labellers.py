"""Labellers for any model: the zero-shot CLIP labeller (a tiny CLIP built from config) through the label stage
with the mixture calibration of the label table, the calibration's invariants, the users' label files (CelebA
layout and CSV), the folder labeller trained on rendered ToyFaces, and the preflight check of both."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classifiers import ClassifierConfig, check_classifier, load_classifier, load_judge
from pipeline.data.labels import read_labels
from pipeline.data.store import open_store
from pipeline.io.errors import ConfigError, ModelNotFoundError
from pipeline.io.files import TrainingCheckpoint
from pipeline.labellers.calibration import AttributeCalibration, calibrate, fit_calibration
from pipeline.labellers.clip import PromptAttribute
from pipeline.labellers.cnn import CNNConfig
from pipeline.labellers.datasets import load_images, read_label_file
from pipeline.steps import toy_dataset
from pipeline.steps.train_classifier import TrainClassifierConfig
from pipeline.steps.train_classifier import run as train_classifier
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, ToyFacesConfig, make_batch
from tests.helpers import run_study, tiny_clip_tokenizer, tiny_study_overrides

ATTRIBUTES = [
    PromptAttribute("smiling", ["a smiling face", "a happy face"], ["a serious face"]),
    PromptAttribute("glasses", ["a face with glasses"], ["a face with bare eyes"]),
]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP checkpoint folder built from config (no download): 2-layer text and vision towers of width 32, a
    16-d projection, 32 px images in 8 px patches, the in-memory character tokenizer and CLIP's preprocessing
    config (shortest edge 32, centre crop 32)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = tiny_clip_tokenizer(max_length=32)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    text = {
        **tower,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 32,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(3)
    vision = {**tower, "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    folder = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _clip_config(folder: Path) -> ClassifierConfig:
    return ClassifierConfig(name="clip", path=str(folder), attributes=ATTRIBUTES, calibration="mixture")


def test_clip_labeller_scores_prompt_pairs_with_clips_preprocessing(tiny_clip_dir: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPModel

    labeller = load_classifier(_clip_config(tiny_clip_dir))
    pixels = torch.randint(0, 256, (2, 3, 32, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = pixels.float() / 255
    logits = labeller(images)
    assert logits.shape == (2, 2) and labeller.attribute_names == ("smiling", "glasses")
    assert labeller.features(images).shape == (2, labeller.num_features) == (2, 16)
    assert not any(parameter.requires_grad for parameter in labeller.parameters())
    # the batched torch preprocessing equals CLIP's processor (a crop of 32 px out of 48, then normalisation)
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    reference = processor(images=list(pixels.permute(0, 2, 3, 1).numpy()), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(labeller.preprocessing(images), reference, atol=1e-5, rtol=1e-5)
    # the logit is CLIP's two-way log-odds of the positive against the negative prompt set
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = tiny_clip_tokenizer(max_length=32)
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=reference).pooler_output, dim=-1)

        def prompts(texts: list[str]) -> torch.Tensor:
            tokens = tokenizer(texts, padding=True, return_tensors="pt")
            text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            return torch.nn.functional.normalize(text.mean(0), dim=0)

        expected = (
            model.logit_scale.exp()
            * image
            @ (prompts(["a smiling face", "a happy face"]) - prompts(["a serious face"]))
        )
    torch.testing.assert_close(logits[:, 0], expected, atol=1e-4, rtol=1e-4)


class _TwoGroups(torch.nn.Module):
    """A labeller whose logits are the wrapped one's plus 3, and plus 8 more on images whose top-left red pixel
    is above 0.5: two groups, both above the zero-shot decision point 0."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.attribute_names = inner.attribute_names

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images) + 3.0 + 8.0 * _upper_group(images).float().unsqueeze(1)


def _upper_group(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0] > 0.5


@pytest.mark.parametrize("groups", [1, 2])
def test_the_label_stage_calibrates_the_clip_table_on_the_samples(
    tiny_model_dir: Path, tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, groups: int
) -> None:
    """The label stage writes sigmoid(scale * (raw CLIP logit - shift)) with the fit it reports in its metrics;
    two groups of scores are split between them, whatever CLIP's zero says."""
    from stages import generate, label

    if groups == 2:
        monkeypatch.setattr(label, "load_classifier", lambda cfg, device: _TwoGroups(load_classifier(cfg, device)))

    def listed(prompts: list[str]) -> str:
        return "[" + ",".join(f"'{prompt}'" for prompt in prompts) + "]"

    entries = [f"{{name:{a.name},positive:{listed(a.positive)},negative:{listed(a.negative)}}}" for a in ATTRIBUTES]
    changes = {"generate.num_samples": 48, "generate.shard_size": 16, "classifier.attributes": f"[{','.join(entries)}]"}
    overrides = ["classifier=clip", *tiny_study_overrides(tiny_model_dir, tiny_clip_dir, changes)]
    with run_study(tmp_path, overrides, [generate, label]) as folder:
        seeds, names, table = read_labels(folder / "data/labels.csv")
        metrics = json.loads((folder / "metrics/label.json").read_text())
        store = open_store(folder / "data/samples")
        images = torch.cat(
            [store.as_images(batch[store.image_field]) for batch in store.iter_batches((store.image_field,))]
        )
    assert names == ["smiling", "glasses"] and torch.equal(seeds, store.seeds)
    labeller = load_classifier(_clip_config(tiny_clip_dir))
    raw = (_TwoGroups(labeller) if groups == 2 else labeller)(images)
    for index, name in enumerate(names):
        fit = metrics["calibration"][name]
        expected = torch.sigmoid(fit["scale"] * (raw[:, index] - fit["shift"]))
        torch.testing.assert_close(table[:, index], expected, atol=2e-3, rtol=0)
        assert metrics["frequency"][name] == pytest.approx((table[:, index] > 0.5).float().mean().item())
        if groups == 2:
            assert fit["split"]
            assert torch.equal(table[:, index] > 0.5, _upper_group(images))
            assert 3.0 < fit["shift"] < 11.0


def _bimodal(count_low: int, count_high: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(count_low, generator=generator, dtype=torch.float64) * 0.6 + 1.0
    high = torch.randn(count_high, generator=generator, dtype=torch.float64) * 0.6 + 5.0
    return torch.cat([low, high]), torch.cat([torch.zeros(count_low), torch.ones(count_high)]).bool()


def test_calibration_splits_a_bimodal_distribution_between_its_modes() -> None:
    scores, truth = _bimodal(600, 200)  # both modes above the zero-shot decision point 0
    fit = fit_calibration(scores)
    assert fit.split and 2.0 < fit.shift < 4.0 and fit.upper_weight == pytest.approx(0.25, abs=0.02)
    probabilities = torch.sigmoid(fit.apply(scores))
    assert ((probabilities > 0.5) == truth).double().mean() > 0.99
    # probabilities mean what they say: the mean probability of the upper group is its share
    assert probabilities.mean().item() == pytest.approx(0.25, abs=0.02)


def test_calibration_is_invariant_to_shifting_and_scaling_the_raw_scores() -> None:
    scores, _ = _bimodal(300, 500, seed=1)
    fit, moved = fit_calibration(scores), fit_calibration(3.0 * scores - 7.0)
    torch.testing.assert_close(fit.apply(scores), moved.apply(3.0 * scores - 7.0), atol=1e-4, rtol=1e-4)
    assert moved.shift == pytest.approx(3.0 * fit.shift - 7.0, rel=1e-4)


def test_calibration_leaves_one_group_and_degenerate_scores_as_they_are() -> None:
    one_group = torch.randn(2000, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 1.0
    for scores in (one_group, torch.full((50,), 2.0), torch.tensor([1.0, 2.0])):
        fit = fit_calibration(scores)
        assert not fit.split and (fit.shift, fit.scale) == (0.0, 1.0)


def test_calibrating_a_table_works_on_its_log_odds() -> None:
    scores, truth = _bimodal(100, 60, seed=3)
    table = torch.sigmoid(torch.stack([scores, -scores], dim=1)).float()
    calibrated, fits = calibrate(table, "mixture")
    assert ((calibrated[:, 0] > 0.5) == truth).float().mean() > 0.97
    assert ((calibrated[:, 1] > 0.5) == ~truth).float().mean() > 0.97
    assert fits[0].shift == pytest.approx(-fits[1].shift, rel=1e-3)
    assert calibrate(table, "none")[0] is table
    with pytest.raises(ConfigError, match=r"classifier\.calibration='gmm'"):
        calibrate(table, "gmm")
    with pytest.raises(ConfigError, match=r"classifier\.calibration='gmm'"):
        ClassifierConfig(calibration="gmm")


def test_celeba_layout_and_csv_label_files_are_read(tmp_path: Path) -> None:
    celeba = tmp_path / "list_attr_celeba.txt"
    celeba.write_text("3\nSmiling Eyeglasses Young \n000001.jpg -1  1 1\n000002.jpg  1 -1 1\n000003.jpg 1 1 -1\n")
    table = read_label_file(celeba)
    assert table.files == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert table.names == ["Smiling", "Eyeglasses", "Young"]
    assert table.labels.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    chosen = table.select(["Young", "Smiling"], "train_classifier.attributes")
    assert chosen.names == ["Young", "Smiling"] and chosen.labels[:, 0].tolist() == [1, 1, 0]
    with pytest.raises(ConfigError, match=r"train_classifier\.attributes: Bald not among"):
        table.select(["Bald"], "train_classifier.attributes")
    listed = tmp_path / "labels.csv"
    listed.write_text("file,smiling,hat\na.png,1,0\nb.png,0,0\n")
    table = read_label_file(listed)
    assert table.files == ["a.png", "b.png"] and table.names == ["smiling", "hat"]
    assert table.labels.tolist() == [[1, 0], [0, 0]]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("absent.txt", None, "no such file"),
        ("short.csv", "file,smiling,hat\na.png,1\n", "line 2 has 1 values, the header names 2"),
        ("long.txt", "1\nSmiling\nx.jpg 1 -1\n", "line 3 has 2 values, the header names 1"),
        ("count.txt", "2\nSmiling\nx.jpg 1\n", "line 1 says 2 images, 1 are listed"),
        ("values.csv", "file,smiling\na.png,-1\n", "line 2: value '-1' is not one of 1, 0"),
        ("header.csv", "image,smiling\na.png,1\n", "expected a CSV header"),
        ("twice.csv", "file,smiling\na.png,1\na.png,0\n", "an image is listed twice"),
        ("empty.txt", "0\nSmiling\n", "no images listed"),
    ],
)
def test_bad_label_files_are_one_line_naming_the_file(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_label_file(path)
    assert f"label file '{path}'" in _one_line(error) and message in str(error.value)


def test_images_are_cropped_resized_and_missing_ones_named(tmp_path: Path) -> None:
    from PIL import Image

    picture = np.zeros((40, 60, 3), dtype=np.uint8)
    picture[:, 10:50] = 200  # the centre square is uniform, the cropped side columns are black
    Image.fromarray(picture).save(tmp_path / "wide.png")
    images = load_images(tmp_path, ["wide.png"], 8)
    assert images.shape == (1, 3, 8, 8) and images.dtype == torch.uint8 and (images == 200).all()
    with pytest.raises(ConfigError) as error:
        load_images(tmp_path, ["wide.png", "gone.png"], 8)
    assert "gone.png': listed in the label file but missing" in _one_line(error)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"bad\.png': not an image that can be read"):
        load_images(tmp_path, ["bad.png"], 8)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 ToyFaces faces written by the toy_dataset step in the users' layout (PNG files and a CSV)."""
    folder = tmp_path_factory.mktemp("toy_dataset")
    cfg = toy_dataset.ToyDatasetConfig(num_images=600, seed_offset=61_000_000, batch_size=300)
    toy_dataset.run(cfg, ToyFacesConfig(), folder / "images", folder / "labels.csv")
    return folder


def test_the_toy_dataset_holds_the_worlds_exact_attributes(rendered: Path, tmp_path: Path) -> None:
    table = read_label_file(rendered / "labels.csv")
    assert table.names == list(BINARY_ATTRIBUTES) and table.files[:2] == ["61000000.png", "61000001.png"]
    images, factors = make_batch(range(61_000_000, 61_000_004), ToyFacesConfig())
    torch.testing.assert_close(table.labels[:4], factors.binary)
    loaded = load_images(rendered / "images", table.files[:4], 32)
    torch.testing.assert_close(loaded, (images * 255).round().to(torch.uint8))
    again = tmp_path / "again"
    cfg = toy_dataset.ToyDatasetConfig(num_images=4, seed_offset=61_000_000)
    toy_dataset.run(cfg, ToyFacesConfig(), again / "images", again / "labels.csv")
    assert (again / "images/61000003.png").read_bytes() == (rendered / "images/61000003.png").read_bytes()


def test_the_folder_labeller_learns_rendered_faces(rendered: Path, tmp_path: Path) -> None:
    cfg = TrainClassifierConfig(
        images=str(rendered / "images"),
        labels=str(rendered / "labels.csv"),
        model=CNNConfig(widths=[8, 16, 32], feature_dim=64, resolution=32),
        steps=300,
        checkpoint_every=300,
    )
    _, metrics = train_classifier(cfg, tmp_path / "classifier", tmp_path / "ck", progress=False)
    assert metrics["heldout_images"] == 120 and metrics["train_images"] == 480
    for name in BINARY_ATTRIBUTES:
        assert metrics[f"accuracy/{name}"] >= 0.95, metrics
    config = ClassifierConfig(name="folder", path=str(tmp_path / "classifier"))
    check_classifier(config)
    labeller = load_classifier(config)
    images, factors = make_batch(range(62_000_000, 62_000_256), ToyFacesConfig())
    assert labeller.attribute_names == BINARY_ATTRIBUTES and labeller.features(images[:2]).shape == (2, 64)
    accuracy = ((labeller(images) > 0).float() == factors.binary).float().mean(0)
    assert accuracy.min() >= 0.9, accuracy


def test_folder_training_resumes_a_killed_run_exactly(
    rendered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    cfg = TrainClassifierConfig(
        images=str(rendered / "images"),
        labels=str(rendered / "labels.csv"),
        attributes=["hat", "smiling"],
        model=CNNConfig(widths=[8], feature_dim=8, resolution=8),
        steps=6,
        batch_size=8,
        checkpoint_every=3,
    )
    whole, _ = train_classifier(cfg, tmp_path / "whole", tmp_path / "ck_whole", progress=False)
    save = TrainingCheckpoint.save

    def killed_after_the_first_checkpoint(self, step, modules, optimizer):
        save(self, step, modules, optimizer)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingCheckpoint, "save", killed_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "resumed", tmp_path / "ck", progress=False)
    monkeypatch.setattr(TrainingCheckpoint, "save", save)
    resumed, _ = train_classifier(cfg, tmp_path / "resumed", tmp_path / "ck", progress=False)
    assert resumed.attribute_names == ("hat", "smiling")
    for (key, value), other in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(value, other, rtol=0, atol=0, msg=key)


def test_preflight_names_the_fix_for_a_missing_clip_or_folder_labeller(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    check_classifier(_clip_config(tiny_clip_dir))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    absent = ClassifierConfig(name="clip", path="openai/clip-vit-base-patch32", attributes=ATTRIBUTES)
    with pytest.raises(ModelNotFoundError) as error:
        check_classifier(absent)
    assert "classifier.path 'openai/clip-vit-base-patch32'" in _one_line(error)
    assert "hf download openai/clip-vit-base-patch32" in str(error.value)
    # the same id found in the Hugging Face cache passes
    snapshot = tmp_path / "hub/models--openai--clip-vit-base-patch32/snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        shutil.copy(tiny_clip_dir / name, snapshot / name)
    with pytest.raises(ModelNotFoundError, match=r"tokenizer\.json or vocab\.json not found locally"):
        check_classifier(absent)  # without a vocabulary transformers would build an empty tokenizer
    shutil.copy(tiny_clip_dir / "tokenizer.json", snapshot / "tokenizer.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("0" * 40)
    check_classifier(absent)
    with pytest.raises(ConfigError, match=r"classifier\.attributes=\[\]"):
        check_classifier(ClassifierConfig(name="clip", path=str(tiny_clip_dir)))
    with pytest.raises(ModelNotFoundError) as error:
        check_classifier(ClassifierConfig(name="folder", path=str(tmp_path / "untrained")))
    assert "untrained'" in _one_line(error) and "dvc repro train_classifier" in str(error.value)


def test_the_judge_decides_where_the_calibrated_label_table_does(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """With a calibrated table, edits are judged at the table's decision point (probability 0.5), not at the
    labeller's raw zero: the judge's logits are the table's calibrated log-odds."""
    config = _clip_config(tiny_clip_dir)
    images = torch.rand((40, 3, 32, 32), generator=torch.Generator().manual_seed(5))
    raw = load_classifier(config)(images)
    points = raw.median(dim=0).values  # decision points away from CLIP's zero, as a fit on samples would find
    fits = {
        name: asdict(AttributeCalibration(split=True, shift=float(point), scale=scale, upper_weight=0.5))
        for name, point, scale in zip(("smiling", "glasses"), points, (2.0, 0.5), strict=True)
    }
    metrics = tmp_path / "label.json"
    metrics.write_text(json.dumps({"frequency": {}, "calibration": fits}))
    config.calibration = "mixture"
    judge = load_judge(config, label_metrics=metrics)
    for index, name in enumerate(("smiling", "glasses")):
        expected = fits[name]["scale"] * (raw[:, index] - fits[name]["shift"])
        torch.testing.assert_close(judge(images)[:, index], expected, atol=1e-4, rtol=1e-4)
    assert judge.attribute_names == ("smiling", "glasses")
    assert ((judge(images) > 0).float().mean(dim=0) == 0.5).all()  # half the images on each side of the median
    config.calibration = "none"
    assert not hasattr(load_judge(config, label_metrics=metrics), "shift")  # the labeller itself
    config.calibration = "mixture"
    with pytest.raises(ConfigError, match=r"no calibration in '.*missing.json'; run `dvc repro label` first"):
        load_judge(config, label_metrics=tmp_path / "missing.json")
