"""Every params section and its schema, and the params of each stage.

``SECTIONS`` maps each key of ``params.yaml`` that a step reads to the dataclass that validates it; the
tests check that it covers every section ``conf/`` composes and that each dataclass's defaults equal the
committed YAML. The dataclasses state every default once: each ``conf/`` group's default option is generated
from them (:func:`conf_files`, with the comments of ``CONF_NOTES``; ``python -m pipeline.io.params --write-conf``).
A stage reads its params through :func:`stage_params`, which allows exactly the keys its step declares in
``PARAMS`` (equal to the stage's ``params`` in dvc.yaml, also checked by the tests).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

from pipeline.classifiers import ClassifierConfig
from pipeline.diffusion.models import ModelConfig
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.io.launch import LaunchConfig
from pipeline.io.params import CONF_COMMAND, StageParams, conf_text
from pipeline.io.tracking import LoggingConfig
from pipeline.steps.edit import EditConfig
from pipeline.steps.evaluate import EvaluateConfig
from pipeline.steps.generate import GenerateConfig
from pipeline.steps.hstats import HStatsConfig
from pipeline.steps.jacobian import JacobianConfig
from pipeline.steps.pca import PCAConfig
from pipeline.steps.preview import PreviewConfig
from pipeline.steps.pullback import PullbackConfig
from pipeline.steps.supervised import SupervisedConfig
from pipeline.steps.supervised_study import SupervisedStudyConfig
from pipeline.steps.toy_dataset import ToyDatasetConfig
from pipeline.steps.toy_quality import ToyQualityConfig
from pipeline.steps.train_classifier import TrainClassifierConfig
from pipeline.steps.train_toy_classifier import TrainToyClassifierConfig
from pipeline.steps.train_toy_model import TrainToyModelConfig
from pipeline.toyfaces.world import ToyFacesConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "sampler": SamplerConfig,
    "classifier": ClassifierConfig,
    "toyfaces": ToyFacesConfig,
    "generate": GenerateConfig,
    "hstats": HStatsConfig,
    "directions.pca": PCAConfig,
    "directions.supervised": SupervisedConfig,
    "directions.jacobian": JacobianConfig,
    "directions.pullback": PullbackConfig,
    "preview": PreviewConfig,
    "evaluate": EvaluateConfig,
    "supervised_study": SupervisedStudyConfig,
    "edit": EditConfig,
    "toy_quality": ToyQualityConfig,
    "train_toy_model": TrainToyModelConfig,
    "train_toy_classifier": TrainToyClassifierConfig,
    "toy_dataset": ToyDatasetConfig,
    "train_classifier": TrainClassifierConfig,
    "logging": LoggingConfig,
    "launch": LaunchConfig,
}
"""params key -> schema, for every section of ``params.yaml`` (``device`` is a plain string)."""


def step_module(stage: str) -> ModuleType:
    """The step of a DVC stage: ``pipeline.steps.<stage>``."""
    return importlib.import_module(f"pipeline.steps.{stage}")


def stage_params(stage: str, params: DictConfig | None = None) -> StageParams:
    """The params of ``stage`` (from ``params.yaml`` unless given): the keys its step declares in ``PARAMS``."""
    return StageParams(stage, step_module(stage).PARAMS, SECTIONS, params)


CONF_NOTES: dict[str, str] = {
    # section keys: the description under each generated file's header (a group's subsections: their comment)
    "toyfaces": "The procedural ToyFaces world (pipeline/toyfaces/world.py): faces with known attributes.",
    "toyfaces.supersample": "render at resolution * supersample, then area-average down",
    "toyfaces.probabilities": "P(attribute = 1)",
    "toyfaces.correlations": "deliberate bias for conditional disentanglement to remove (like CelebA smile/gender)",
    "toyfaces.correlations.first": "",
    "toyfaces.correlations.second": "",
    "toyfaces.correlations.rho": "",
    "toyfaces.max_pose_offset": "horizontal face offset at pose_x = +-1, in half-image units",
    "train_toy_model": "DDPM on ToyFaces: a diffusers UNet2DModel trained on images drawn fresh every step.",
    "train_toy_model.heldout_size": "fixed noisy images for the final held-out loss metric",
    "train_toy_classifier": "Multi-label CNN on true ToyFaces labels (attributes + continuous factors).",
    "train_toy_classifier.data_seed_offset": "training images never overlap the DDPM's or the held-out seeds",
    "toy_quality": "Judge the trained ToyFaces DDPM: sample, classify, compare with the world's statistics.",
    "toy_quality.steps": "DDIM steps",
    "toy_quality.clip_sample": "clamp the predicted x_0 to [-1, 1] at every DDIM step",
    "toy_quality.seed_offset": "seeds never used for training",
    "toy_quality.confidence": "an attribute is decided when p < 1 - confidence or p > confidence",
    "toy_quality.grid_samples": "generated images shown beside as many real ones",
    "toy_dataset": "Rendered ToyFaces with their exact attributes, in the users' labelled-folder layout (PNG files +"
    " CSV):\nthe default training data of train_classifier.",
    "toy_dataset.seed_offset": "world seeds never used by the other ToyFaces stages",
    "toy_dataset.batch_size": "faces rendered at once",
    "train_classifier": "The `folder` labeller: the attribute CNN trained on your labelled images. For CelebA:\n"
    "  -S train_classifier.images=/data/celeba/img_align_celeba"
    " -S train_classifier.labels=/data/celeba/list_attr_celeba.txt\n"
    "  -S train_classifier.model.resolution=64 -S 'train_classifier.model.widths=[32,64,128,256]'"
    " -S train_classifier.steps=20000",
    "train_classifier.images": "",
    "train_classifier.labels": ".csv: file,<attr>,... with 0/1; otherwise CelebA's list_attr_celeba.txt layout",
    "train_classifier.attributes": "the columns to learn; empty: every column of the label file",
    "train_classifier.flip": "random horizontal flips",
    "train_classifier.heldout_fraction": "images kept out of training, measured in metrics/train_classifier.json",
    "model": "The embedded default: the ToyFaces DDPM trained by the train_toy_model stage (committed).\n"
    "The other options (conf/model/*.yaml) extend this one and state what differs.",
    "model.hspace_location": "after | before | down_blocks.i | up_blocks.i",
    "model.clip_sample": "clamp the predicted x_0 to [-1, 1] at every DDIM step (small model)",
    "model.autocast": "none | bfloat16 | float16: mixed precision for sampling and edit decodes (spectra stay exact)",
    "model.channels_last": "NHWC memory format for the UNet (pays on GPUs with tensor cores)",
    "model.compile": "none | default | reduce-overhead | max-autotune: torch.compile the UNet layers for sampling and"
    " edits",
    "sampler": "DDIM sampling for generation and edits (pipeline/diffusion/sampling.py).",
    "sampler.eta": "0 = deterministic DDIM, 1 = DDPM-like (variance noise stored per sample)",
    "sampler.injection": "how an h edit enters each step: symmetric (edited eps in both terms, paper A) | asyrp"
    " (unedited eps in the direction term; 2 UNet passes per edited step)",
    "classifier": "The project's ToyFaces attribute CNN (trained by the train_toy_classifier stage, committed).\n"
    "The other options (conf/classifier/*.yaml) extend this one and state what differs.",
    "classifier.attributes": "clip only",
    "classifier.calibration": "none: the label table as the classifier gives it (see clip.yaml for mixture)",
    "generate": "Samples whose h statistics define the directions (held-out edit seeds live in `preview`).",
    "generate.h_dtype": "storage of h in the shards: float16 | float32",
    "generate.store_noise": "keep the variance noise z (only when sampler.eta > 0); else it is redrawn from seeds",
    "launch": "How generate, label and evaluate run: in the stage process (launcher null), or as `shards` Hydra shard"
    " jobs\nthen a merge. No stage declares this section, so switching launcher or shard count never invalidates an"
    " output.\n"
    "The other options (conf/launch/*.yaml) extend this one and state what differs.",
    "launch.launcher": "null | basic | joblib | submitit_local | submitit_slurm (the last three: pip install -e"
    " '.[launch]')",
    "launch.shards": "",
    "launch.overrides": "extra Hydra overrides for the launcher, e.g. [hydra.launcher.n_jobs=4]",
    "hstats": "Streaming statistics of h over the samples store.",
    "hstats.top_k": 'samples per side of the "extremes" groups (highest / lowest classifier score)',
    "hstats.label_conditioned": "also means of samples scoring above / below the threshold",
    "directions": "How directions are computed, one subsection per method (stage name = subsection name).",
    "directions.pca": "",
    "directions.supervised": "",
    "directions.supervised.groups": "labels: all samples above vs below hstats.threshold | extremes: top-k vs"
    " bottom-k by classifier score (paper A)",
    "directions.supervised.conditional": "target attribute -> attributes projected out (one joint solve over all"
    " steps)",
    "directions.supervised.estimator": "mean_difference | joint_regression (each label's coefficient, the others"
    " held fixed) | projection (out of the others' span) | logistic (per-step probes)",
    "directions.supervised.window": "null: every step | [start, end): fractions of the sampler's steps edited"
    " (0 = noisiest), e.g. [0.5, 1.0] the later half",
    "directions.supervised.attribute_windows": "attribute -> its own window (null: every step), overriding `window`"
    " for it",
    "directions.supervised.shared_steps": "true: one direction for every edited step (their mean) instead of one"
    " per step",
    "directions.supervised.normalise_steps": "rescale every edited step to the same norm (total norm kept)",
    "directions.supervised.samples_per_side": "null: every labelled sample | N: each attribute from N random samples"
    " per side (few-samples study)",
    "directions.supervised.significance": "null | z: keep only the coordinates whose coefficient has |t| > z"
    " (mean_difference, joint_regression)",
    "directions.supervised.seed": "draws of samples_per_side",
    "directions.supervised.probe_l2": "logistic: L2 weight on standardised h",
    "directions.supervised.probe_iterations": "logistic: L-BFGS iterations per step and attribute",
    "directions.jacobian": "image-specific directions of d(mask * eps)/d h along a sample's trajectory (paper A)",
    "directions.jacobian.seed_offset": "held-out samples: seeds seed_offset .. seed_offset + num_samples - 1",
    "directions.jacobian.num_samples": "",
    "directions.jacobian.k": "directions per step",
    "directions.jacobian.steps": "all | list of grid step indices to analyse",
    "directions.jacobian.source_step": 'the step whose vectors "global" applies at every step',
    "directions.jacobian.apply": "global | per_step",
    "directions.jacobian.unit": "alpha of edit scale 1: Delta h_j = alpha * sigma_j * u (sigma_j in eps units per h"
    " unit)",
    "directions.jacobian.mask": "null | a ToyFaces region (mouth, eyes, hair, face, background) | [top, left, bottom,"
    " right] | mask image path",
    "directions.jacobian.solver.block_size": "null: k",
    "directions.jacobian.solver.tolerance": "",
    "directions.jacobian.solver.max_iterations": "",
    "directions.jacobian.solver.chunk_size": "",
    "directions.jacobian.solver.mode": "auto | forward | reverse",
    "directions.pullback": "local bases of d h / d x_t, edits by x-space guidance (paper B)",
    "directions.pullback.basis_size": "basis vectors per sample (n)",
    "directions.pullback.edit_t": "fractions of the schedule (1.0 = noisiest)",
    "directions.pullback.step_size": "gamma of x-space guidance",
    "directions.pullback.iterations": "N_g",
    "directions.pullback.boost_t": "eta = 1 from here on when decoding edits; null: off",
    "directions.pullback.scales": "guidance strengths c of the preview",
    "directions.pullback.solver": "as directions.jacobian.solver",
    "preview": "Labelled edit grids of held-out samples, every edit framed by the judge's verdict (the evaluate.broken"
    " check).",
    "preview.seed_offset": "held-out seeds, never used to fit directions",
    "preview.grid_samples": "samples per direction",
    "preview.scales": "in each method's unit (PCA: std; supervised: mean difference); 0 = unedited",
    "preview.max_directions": "directions shown per untargeted file (targeted files: every attribute)",
    "preview.methods": "files previewed, one preview@<method> stage each (dvc.yaml foreach)",
    "logging": "DVC metrics/plots files are always written. W&B: auto (online with an API key, else offline) |\n"
    'offline | online | disabled; the WANDB_MODE environment variable wins. dir "" = $WANDB_DIR or\n'
    "~/.cache/hspace-directions/wandb (outside the repository, so DVC temp workspaces do not lose runs).",
    "evaluate": "One evaluation protocol for every directions file (pipeline/evaluation/protocol.py; docs/methods.md,\n"
    '"Evaluation protocol"), on held-out seeds: each direction, each sign, each scale judged per sample.\n'
    "The full profile (conf/evaluate/full.yaml, -S evaluate=full) extends this one and states what differs.",
    "evaluate.seed_offset": "held-out seeds from here (choosing, then reported), never used to fit directions",
    "evaluate.choose_samples": "seeds that choose each side's operating scale (and an untargeted side's label)",
    "evaluate.num_samples": "seeds that report it; Wilson 95% intervals about +-0.08 at 128 eligible samples",
    "evaluate.untargeted_choose_samples": "the first of the choosing seeds choose for untargeted files",
    "evaluate.methods": "",
    "evaluate.untargeted_samples": "the first of the reported seeds report untargeted files (PCA, Jacobian, pullback)",
    "evaluate.max_directions": "directions judged per untargeted file (targeted files: every attribute)",
    "evaluate.scales": "the curve's first magnitudes in each file's own unit, each edited with + and - signs",
    "evaluate.growth": "a curve whose operating point is at an end gains the scale this factor beyond it",
    "evaluate.max_extensions": "at most this many scales added to one side's curve",
    "evaluate.min_clean_flip": "below this clean flip at every scale a side reads 'no scale flips it'",
    "evaluate.method_scales": "per-method curves where the unit differs (pullback: the guidance strength c)",
    "evaluate.max_broken": "an operating scale has at most this share of its eligible edits broken",
    "evaluate.min_eligible": "an untargeted direction's label needs this many eligible samples",
    "evaluate.grid_samples": "samples per direction in plots/evaluate/<method>.png",
    "evaluate.broken": "the per-image broken check (pipeline/evaluation/broken.py)",
    "evaluate.broken.detector": "auto: rerender with the ToyFaces classifier, else knn (k-NN realism in its features)",
    "evaluate.broken.seed_offset": "unedited seeds the threshold is calibrated on (the knn references first, then"
    " these)",
    "evaluate.broken.calibration_samples": "",
    "evaluate.broken.reference_samples": "knn only",
    "evaluate.broken.quantile": "threshold = margin x this quantile of the unedited samples' scores",
    "evaluate.broken.margin": "",
    "evaluate.broken.knn_k": "",
    "evaluate.broken.prune_fraction": "knn: leave out this share of references with the widest balls",
    "supervised_study": "Supervised estimators, windows and injections judged side by side, and the few-samples"
    ' curve\n(pipeline/steps/supervised_study.py; docs/methods.md, "Supervised study"). Each variant gives its'
    " estimator,\nwindow (null: every step), shared_steps, normalise_steps, significance (null: none) and injection"
    " (null: sampler.injection);\na variant states its name, its estimator and what differs from those defaults."
    " directions.supervised is not read,\nso picking the default from this table does not rerun the study.",
    "supervised_study.seed_offset": "held-out seeds of the study, disjoint from evaluate's (the default is picked"
    " here)",
    "supervised_study.choose_samples": "seeds that choose each side's operating scale; the next num_samples report it",
    "supervised_study.num_samples": "",
    "supervised_study.scales": "in the mean difference's unit, each with both signs",
    "supervised_study.max_broken": "",
    "supervised_study.variants": "more arms, each about 7 minutes on 2 CPU cores (an arm's decodes are kept when"
    " others are added):\n"
    "- {name: joint_early_half, estimator: joint_regression, window: [0.0, 0.5]}\n"
    "- {name: joint_normalised, estimator: joint_regression, normalise_steps: true}\n"
    "- {name: joint_shared_steps, estimator: joint_regression, shared_steps: true}",
    "supervised_study.variants.name": "",
    "supervised_study.variants.estimator": "",
    "supervised_study.few_samples_variant": "paper A's claim (about ten samples per side) is about the mean difference",
    "supervised_study.samples_per_side": "the few-samples curve: each attribute's direction from N random samples"
    " per side (each N about 7 minutes)",
    "supervised_study.draws": "",
    "edit": "Edit your own images (stage `edit` and the `hspace-edit` command): invert, apply a directions file,"
    " judge.",
    "edit.inputs": "an image file or a folder (its image files in name order)",
    "edit.directions": "any method's file",
    "edit.names": "directions to apply; [] = the first max_directions (jacobian: k0.., pullback: v0..)",
    "edit.max_directions": "",
    "edit.scales": "in the file's unit (supervised: the mean difference; pullback: guidance c); 0 is always drawn",
    "edit.inversion": "edit_friendly (exact DDPM inversion) | ddim (deterministic, approximate)",
    "edit.inversion_seed": "seed of the edit-friendly inversion's noise",
    "edit.crop": "none (refuse another aspect ratio) | center (centre-crop to the model's)",
    "edit.upscale": "grid tiles enlarged this many times",
}
"""The comment of each params key in the generated ``conf/`` files, by dotted key (no values: those are the
dataclasses' defaults); a section's own key gives the description under the file's header, a multi-line note
goes above its key. The keys of a level with a note are written in this order (among their own places in field
order), so that params.yaml keeps its order; an item of a list of dataclasses states its noted fields and those
off their defaults."""


def _default_options(conf_dir: Path) -> dict[str, str]:
    """group -> its default option, from the defaults list of ``conf_dir/config.yaml``."""
    defaults = OmegaConf.to_container(OmegaConf.load(conf_dir / "config.yaml")).get("defaults", [])
    return {group: option for entry in defaults if isinstance(entry, dict) for group, option in entry.items()}


def conf_files(conf_dir: str | Path = "conf") -> dict[Path, str]:
    """Each generated ``conf/`` file and its text: every group's default option (as ``config.yaml`` names it),
    written from the defaults of its sections' dataclasses with the comments of ``CONF_NOTES``."""
    conf_dir = Path(conf_dir)
    files = {}
    for group, option in _default_options(conf_dir).items():
        keys = [key for key in SECTIONS if key.split(".")[0] == group]
        if not keys:
            continue
        sources = [f"{SECTIONS[key].__module__}.{SECTIONS[key].__qualname__}" for key in keys]
        header = [
            f"Generated from the defaults of {sources[0] if len(sources) == 1 else 'these dataclasses'}"
            f" by `{CONF_COMMAND}`.",
            *[f"  {key}: {source}" for key, source in zip(keys, sources, strict=True) if len(sources) > 1],
            "Do not edit: change the dataclass (comments: CONF_NOTES in pipeline/steps/sections.py) and rerun it.",
            *CONF_NOTES.get(group, "").splitlines(),
        ]
        root = SECTIONS[group]() if keys == [group] else {key.partition(".")[2]: SECTIONS[key]() for key in keys}
        files[conf_dir / group / f"{option}.yaml"] = conf_text(root, CONF_NOTES, group, header)
    return files
