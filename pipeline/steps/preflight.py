"""Step ``preflight``: check in seconds, before any expensive stage runs, that every resource the study needs is
on this machine and that the settings fit together, without loading a model (docs/architecture.md, "Preflight").

The checks, in order: the device; the model (its folder or the hub id in the local Hugging Face cache, with the
weights of every part; no network), its prompts (``model.text`` exactly for a text-conditioned model) and its
options; the sampler grid against the model's training schedule; the classifier (weights and optional extras,
:func:`pipeline.classifiers.check_classifier`); the Jacobian mask against the classifier; the shard-job launcher.
The sections themselves are validated when the stage reads them (unknown keys, types and ranges), so a typo in
any of them stops the run here too. Each failure is one line naming the key and the fix.
"""

from __future__ import annotations

from typing import Any

from pipeline.classifiers import ClassifierConfig, check_classifier
from pipeline.diffusion.loading import check_source
from pipeline.diffusion.models import AUTOCAST_DTYPES, COMPILE_MODES, ModelConfig, resolve_device, resolve_dtype
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.masks import check_mask_classifier
from pipeline.io.errors import ConfigError, ModelNotFoundError
from pipeline.io.images import list_images
from pipeline.io.launch import LaunchConfig, check_launcher_installed
from pipeline.steps.jacobian import JacobianConfig

PARAMS = (
    "model",
    "sampler",
    "classifier",
    "toyfaces",
    "generate",
    "hstats",
    "directions.pca",
    "directions.supervised",
    "directions.jacobian",
    "directions.pullback",
    "preview",
    "evaluate",
    "supervised_study",
    "edit",
)
"""The params this step reads (its stage's ``params`` in dvc.yaml): every section of the stages after it, each
validated when read; the checks below use ``model``, ``sampler``, ``classifier``, ``directions.jacobian`` and
``edit``."""

CHECKS: dict[str, str] = {
    "params": "every section of PARAMS matches its schema (known keys, types, ranges)",
    "device": "the device exists on this machine",
    "model": "model.source has the files of its layout and the weights of every part, without the network",
    "model.text": "prompts exactly for a text-conditioned model",
    "model.options": "model.dtype, model.autocast and model.compile are known",
    "sampler": "sampler.steps fits the model's training schedule, which predicts epsilon",
    "classifier": "the classifier's weights and extras are present",
    "directions.jacobian.mask": "the mask is one the classifier can use",
    "launch": "the shard-job launcher is installed when launch.shards > 1",
    "edit.inputs": "the edit stage's input file or folder holds images",
}
"""What a successful preflight has checked: the stage writes this, the same for every run that passes, so that
rerunning the check never makes a later stage stale."""


def run(sections: dict[str, Any], device: str, launch: LaunchConfig) -> dict[str, str]:
    """Run the checks on the validated ``sections`` (params key -> section object, every key of :data:`PARAMS`),
    the ``device`` param and the ``launch`` runtime section; return :data:`CHECKS`.

    Raises the first failure: ModelNotFoundError for a missing model or classifier file (naming the key and the
    download or training command), ConfigError for settings that do not fit together.
    """
    resolve_device(device)
    model: ModelConfig = sections["model"]
    sampler: SamplerConfig = sections["sampler"]
    files = check_source(model.source)
    if files.text_conditioned and model.text is None:
        raise ConfigError(
            f"params: model.text: missing; model '{model.source}' is text-conditioned (a Stable Diffusion pipeline): "
            "set model.text.prompt (see conf/model/sd15.yaml)"
        )
    if not files.text_conditioned and model.text is not None:
        raise ConfigError(f"params: model.text: model '{model.source}' is not text-conditioned; remove model.text")
    if files.unet_class == "UNet2DConditionModel" and not files.text_conditioned:
        raise ModelNotFoundError(
            f"model.source '{model.source}': a text-conditioned UNet2DConditionModel needs a pipeline folder with "
            "text_encoder/ and tokenizer/ (a Stable Diffusion layout)"
        )
    resolve_dtype(model.dtype)
    for key, value, known in (("autocast", model.autocast, AUTOCAST_DTYPES), ("compile", model.compile, COMPILE_MODES)):
        if value not in known:
            raise ConfigError(f"params: model.{key}={value!r}: unknown; expected one of {', '.join(known)}")
    if files.prediction_type != "epsilon":
        raise ConfigError(
            f"model.source '{model.source}': prediction_type '{files.prediction_type}' is not supported; "
            "expected 'epsilon'"
        )
    if sampler.steps > files.num_train_timesteps:
        raise ConfigError(
            f"params: sampler.steps={sampler.steps}: must be <= {files.num_train_timesteps}, the training schedule "
            f"of model '{model.source}'"
        )
    classifier: ClassifierConfig = sections["classifier"]
    check_classifier(classifier)
    jacobian: JacobianConfig = sections["directions.jacobian"]
    check_mask_classifier(jacobian.mask, classifier.name)
    if launch.sharded:
        check_launcher_installed(str(launch.launcher))
    try:
        list_images([sections["edit"].inputs])
    except ConfigError as error:
        raise ConfigError(f"params: edit.inputs: {error}; point it at your images (or at inputs/toyfaces)") from None
    return dict(CHECKS)
