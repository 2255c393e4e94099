"""Find a diffusion model's files (a local folder or the Hugging Face hub) and load its parts.

:func:`load_parts` returns the UNet, the DDIM scheduler over its training schedule and, where the model has
them, the autoencoder and the CLIP text encoder with its tokenizer; :func:`pipeline.diffusion.models.load_model`
assembles them into a :class:`~pipeline.diffusion.models.DiffusionModel`. Three layouts are recognised, from
their config files alone (fetched before any weights):

* a diffusers pipeline folder: ``model_index.json``, ``unet/``, ``scheduler/``, and for a latent model
  ``vqvae/`` or ``vae/``, for Stable Diffusion also ``text_encoder/`` and ``tokenizer/``;
* a bare UNet folder: ``config.json`` and weights at the top, optionally a ``scheduler_config.json``;
* a hub id 'owner/name' in either layout, fetched through the Hugging Face cache (safetensors preferred; no
  remote code is ever run).

:func:`check_source` is the preflight: it finds the same files, the weights included, without loading any of them
and without the network (milliseconds).

:func:`compile_unet_blocks` is the ``model.compile`` option: ``torch.compile`` of the UNet's layers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import huggingface_hub.constants
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel, VQModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import CLIPTextModel, CLIPTokenizer

from pipeline.io.errors import ConfigError, ModelNotFoundError

KNOWN_HUB_MODELS: dict[str, str] = {
    "google/ddpm-ema-celebahq-256": "pixel",
    "google/ddpm-ema-church-256": "pixel",
    "google/ddpm-ema-bedroom-256": "pixel",
    "google/ddpm-ema-cat-256": "pixel",
    "google/ddpm-cifar10-32": "pixel",
    "CompVis/ldm-celebahq-256": "latent",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "text",
    "stabilityai/stable-diffusion-2-1-base": "text",
}
"""Hub ids this pipeline was written for, mapped to their kind ("pixel": unconditional pixel-space DDPM;
"latent": unconditional latent DM with a VQ autoencoder; "text": Stable Diffusion 1.x/2.x). Other ids
'owner/name' are loaded the same way."""

TEXT_SUBFOLDERS = ("text_encoder", "tokenizer")
"""Pipeline subfolders of a text-conditioned model's CLIP text encoder and tokenizer."""
UNSUPPORTED_PIPELINE_PARTS = ("text_encoder_2", "prior", "decoder")
"""model_index.json components of pipelines this loader does not handle (SDXL's second encoder, cascades)."""

AUTOENCODER_SUBFOLDERS = ("vqvae", "vae")
"""Pipeline subfolders holding a latent model's autoencoder (LDMPipeline: vqvae; Stable Diffusion: vae)."""
AUTOENCODER_CLASSES: dict[str, type[VQModel] | type[AutoencoderKL]] = {
    "VQModel": VQModel,
    "AutoencoderKL": AutoencoderKL,
}

DEFAULT_TRAIN_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
}
"""Training noise schedule assumed for a bare UNet folder that ships no scheduler config (Ho et al. DDPM)."""

UNET_CLASSES: dict[str, type[UNet2DModel] | type[UNet2DConditionModel]] = {
    "UNet2DModel": UNet2DModel,
    "UNet2DConditionModel": UNet2DConditionModel,
}

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)

# The config files needed to tell the layouts apart, fetched before any weights.
_LAYOUT_FILES = [
    "model_index.json",
    "config.json",
    "scheduler_config.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    *(f"{name}/config.json" for name in AUTOENCODER_SUBFOLDERS),
]

TEXT_ENCODER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
"""Weights of a pipeline's ``text_encoder/`` (safetensors only: see :func:`_text_encoder`)."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class LoadedParts(NamedTuple):
    """The parts of a model as loaded (weights in the requested dtype, on the CPU, train mode as diffusers
    leaves it): ``autoencoder`` is None for a pixel model, ``text_encoder`` and ``tokenizer`` are None for an
    unconditional one."""

    unet: UNet2DModel | UNet2DConditionModel
    scheduler: DDIMScheduler
    autoencoder: VQModel | AutoencoderKL | None
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer | None


def load_parts(source: str, torch_dtype: torch.dtype, clip_sample: bool | None) -> LoadedParts:
    """Load the parts of the model at ``source``, a folder or a hub id 'owner/name' (see the module docstring).

    The scheduler is ``DDIMScheduler.from_config`` of the model's scheduler config (:data:`DEFAULT_TRAIN_SCHEDULE`
    for a bare folder without one) with ``clip_sample`` as given (None: the config's own). ModelNotFoundError names
    what is missing, damaged or not cached (``HF_HUB_OFFLINE=1`` forbids network access); ConfigError names an
    unsupported class.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _load_local(folder, torch_dtype, clip_sample)
    if _HUB_ID.fullmatch(source):
        return _load_hub(source, torch_dtype, clip_sample)
    raise ModelNotFoundError(
        f"model source '{source}': no such folder and not a hub id 'owner/name'; "
        f"known ids: {', '.join(KNOWN_HUB_MODELS)}"
    )


class ModelFiles(NamedTuple):
    """What a model's files say, found without loading them (:func:`check_source`): ``folder`` holds them (the
    local folder, or the cached snapshot of a hub id), ``unet_class`` is the UNet's diffusers class,
    ``scheduler_config`` the training schedule (None: :data:`DEFAULT_TRAIN_SCHEDULE`), ``text_conditioned``
    whether it is a Stable Diffusion layout with a CLIP text encoder."""

    folder: Path
    unet_class: str
    scheduler_config: dict[str, Any] | None
    text_conditioned: bool

    @property
    def num_train_timesteps(self) -> int:
        """Length of the training schedule: the largest number of DDIM steps the model can be sampled with."""
        schedule = self.scheduler_config or DEFAULT_TRAIN_SCHEDULE
        return int(schedule.get("num_train_timesteps", DEFAULT_TRAIN_SCHEDULE["num_train_timesteps"]))

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts according to its scheduler config ("epsilon" unless it says otherwise)."""
        return str((self.scheduler_config or {}).get("prediction_type", "epsilon"))


def check_source(source: str, key: str = "model.source") -> ModelFiles:
    """Preflight of :func:`load_parts`: find the model's config files and weights, local folder or hub id in the
    local Hugging Face cache, without loading any weights and without the network (milliseconds).

    ModelNotFoundError names ``key`` and the fix: a missing folder or file of the layout, or for a hub id whose
    files are not cached, ``hf download <id>``. ConfigError names an unsupported class.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _check_files(folder, key, source, f"set {key} to a saved diffusers model folder or a hub id")
    if not _HUB_ID.fullmatch(source):
        raise ModelNotFoundError(
            f"{key} '{source}': no such folder and not a hub id 'owner/name'; known ids: {', '.join(KNOWN_HUB_MODELS)}"
        )
    fix = f"download the model with `hf download {source}` on a machine with internet (and set HF_HOME to that cache)"
    try:
        snapshot = Path(snapshot_download(source, allow_patterns=_LAYOUT_FILES, local_files_only=True))
    except OSError as error:  # nothing of this repository in the cache (or no cache at all)
        raise ModelNotFoundError(
            f"{key} '{source}': not in the local Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}); {fix}"
        ) from error
    return _check_files(snapshot, key, source, fix)


def _check_files(folder: Path, key: str, source: str, fix: str) -> ModelFiles:
    """:class:`ModelFiles` of the layout in ``folder`` (the files of ``source``, the value of params ``key``);
    ModelNotFoundError ("<key> '<source>': what is missing; <fix>") for a missing config file or weights."""
    named = f"{key} '{source}'"
    try:
        unet_subfolder, scheduler_config = _detect_layout(folder, source)
    except ModelNotFoundError as error:
        raise ModelNotFoundError(f"{key}: {error}; {fix}") from error
    unet_folder = folder / unet_subfolder if unet_subfolder else folder
    unet_class = _unet_class(unet_folder / "config.json", source)
    parts = {unet_folder: WEIGHT_FILES}
    parts.update(
        {folder / name: WEIGHT_FILES for name in AUTOENCODER_SUBFOLDERS if (folder / name / "config.json").is_file()}
    )
    text_conditioned = (folder / "text_encoder" / "config.json").is_file()
    if text_conditioned:
        parts[folder / "text_encoder"] = TEXT_ENCODER_WEIGHTS
        if not (folder / "tokenizer").is_dir():
            raise ModelNotFoundError(f"{named}: no tokenizer/ beside text_encoder/; {fix}")
    for part, names in parts.items():
        if not any((part / name).is_file() for name in names):
            where = part.relative_to(folder).as_posix()
            raise ModelNotFoundError(f"{named}: no weights in {where if where != '.' else 'the folder'} "
                                     f"(expected {' or '.join(names[:2])}); {fix}")  # fmt: skip
    return ModelFiles(folder, unet_class.__name__, scheduler_config, text_conditioned)


def compile_unet_blocks(unet: UNet2DModel | UNet2DConditionModel, mode: str) -> int:
    """Compile, in place with ``torch.compile(mode=mode)``, every layer inside the UNet's down, mid and up
    blocks (resnets, attention, resamplers); return how many were compiled.

    Compiling these regions, not the whole UNet, leaves the blocks themselves eager, so the h-space hooks on
    ``mid_block`` and ``down_blocks.i`` / ``up_blocks.i`` work unchanged and never trigger a recompile, and
    repeated layers of the same shape share compiled code. Each layer compiles on its first call, for static
    shapes (``dynamic=False``): all resnets share one ``forward``, and by default dynamo answers its second
    input shape by recompiling it with symbolic sizes, slower code that is recompiled again for every new shape
    (see ``benchmarks/README.md``, "Sampling notes (moved from the code)"). Dynamo keeps a limited number of
    compiled variants per function (8 by default): the limit is raised to two per layer (its shape, and a
    changed batch size), or a large UNet's later layers would silently fall back to eager.
    """
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    layers = [
        layer
        for block in blocks
        if block is not None
        for group in block.children()
        if isinstance(group, torch.nn.ModuleList)
        for layer in group
    ]
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * len(layers))
    for layer in layers:
        layer.compile(mode=mode, dynamic=False)
    return len(layers)


def _load_local(folder: Path, torch_dtype: torch.dtype, clip_sample: bool | None) -> LoadedParts:
    """Load from a pipeline folder or a bare UNet folder; raise ModelNotFoundError naming what is missing."""
    unet_subfolder, scheduler_config = _detect_layout(folder, str(folder))
    unet_folder = folder / unet_subfolder if unet_subfolder else folder
    if not any((unet_folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelNotFoundError(
            f"model folder '{unet_folder}': no UNet weights (expected {WEIGHT_FILES[0]} or {WEIGHT_FILES[2]})"
        )
    unet_class = _unet_class(unet_folder / "config.json", str(folder))
    try:
        unet = unet_class.from_pretrained(
            str(folder), subfolder=unet_subfolder, use_safetensors=None, torch_dtype=torch_dtype
        )
    except OSError as error:  # diffusers reports a truncated or corrupt weights file as a bare OSError
        weights = next(name for name in WEIGHT_FILES if (unet_folder / name).is_file())
        raise ModelNotFoundError(
            f"model folder '{unet_folder}': UNet weights {weights} are unreadable (truncated or corrupt file); "
            "save or download the model again"
        ) from error
    autoencoder = _autoencoder(folder, str(folder), torch_dtype, folder)
    text_encoder, tokenizer = _text_encoder(folder, str(folder), torch_dtype, folder) or (None, None)
    return LoadedParts(unet, _ddim_scheduler(scheduler_config, clip_sample), autoencoder, text_encoder, tokenizer)


def _load_hub(repo_id: str, torch_dtype: torch.dtype, clip_sample: bool | None) -> LoadedParts:
    """Load through the Hugging Face cache; raise ModelNotFoundError when the files cannot be had."""
    offline = _hub_offline()
    not_local = ModelNotFoundError(
        f"the weights for '{repo_id}' are not available locally: download them once with "
        f"`hf download {repo_id}` on a machine with internet and set HF_HOME to that cache, "
        "or pass a local model folder"
    )
    try:
        config_folder = Path(snapshot_download(repo_id, allow_patterns=_LAYOUT_FILES, local_files_only=offline))
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(f"hub id '{repo_id}': no such model repository on the hub") from error
    except OSError as error:  # not cached while offline, or no connection
        raise not_local from error
    unet_subfolder, scheduler_config = _detect_layout(config_folder, repo_id)
    config_path = config_folder / unet_subfolder / "config.json" if unet_subfolder else config_folder / "config.json"
    unet_class = _unet_class(config_path, repo_id)
    try:
        unet = unet_class.from_pretrained(
            repo_id,
            subfolder=unet_subfolder,
            use_safetensors=None,
            torch_dtype=torch_dtype,
            local_files_only=offline,
        )
        autoencoder = _autoencoder(config_folder, repo_id, torch_dtype, repo_id, local_files_only=offline)
        text_parts = _text_encoder(config_folder, repo_id, torch_dtype, repo_id, local_files_only=offline)
    except OSError as error:
        raise not_local from error
    text_encoder, tokenizer = text_parts or (None, None)
    return LoadedParts(unet, _ddim_scheduler(scheduler_config, clip_sample), autoencoder, text_encoder, tokenizer)


def _autoencoder(
    config_folder: Path, source: str, torch_dtype: torch.dtype, location: str | Path, **options: Any
) -> VQModel | AutoencoderKL | None:
    """The latent model's autoencoder (``vqvae/`` or ``vae/`` of a pipeline folder), or None for pixel models."""
    for subfolder in AUTOENCODER_SUBFOLDERS:
        config = config_folder / subfolder / "config.json"
        if config.is_file():
            class_name = _read_json(config).get("_class_name")
            if class_name not in AUTOENCODER_CLASSES:
                raise ConfigError(
                    f"model '{source}': autoencoder class '{class_name}' is not supported; "
                    f"expected {' or '.join(AUTOENCODER_CLASSES)}"
                )
            return AUTOENCODER_CLASSES[class_name].from_pretrained(
                str(location), subfolder=subfolder, use_safetensors=None, torch_dtype=torch_dtype, **options
            )
    return None


def _text_encoder(
    config_folder: Path, source: str, torch_dtype: torch.dtype, location: str | Path, **options: Any
) -> tuple[CLIPTextModel, CLIPTokenizer] | None:
    """The CLIP text encoder and tokenizer of a Stable Diffusion pipeline folder, or None without ``text_encoder/``.

    The encoder is loaded in float32 and then cast, which works across transformers versions (the dtype
    keyword was renamed in 5.x); safetensors weights only.
    """
    if not (config_folder / "text_encoder" / "config.json").is_file():
        return None
    index_file = config_folder / "model_index.json"
    components = _read_json(index_file) if index_file.is_file() else {}
    unsupported = [name for name in UNSUPPORTED_PIPELINE_PARTS if components.get(name, [None])[0] is not None]
    if unsupported:
        raise ConfigError(
            f"model '{source}': pipeline components {', '.join(unsupported)} are not supported "
            "(Stable Diffusion 1.x and 2.x pipelines are)"
        )
    for name, expected in (("text_encoder", "CLIPTextModel"), ("tokenizer", "CLIPTokenizer")):
        declared = components.get(name, [None, expected])[1]
        if declared not in (expected, f"{expected}Fast"):
            raise ConfigError(f"model '{source}': {name} class '{declared}' is not supported; expected {expected}")
    encoder = CLIPTextModel.from_pretrained(str(location), subfolder="text_encoder", use_safetensors=True, **options)
    tokenizer = CLIPTokenizer.from_pretrained(str(location), subfolder="tokenizer", **options)
    return encoder.to(torch_dtype), tokenizer


def _detect_layout(folder: Path, source: str) -> tuple[str | None, dict[str, Any] | None]:
    """Return (UNet subfolder or None for a bare folder, scheduler config dict or None for the default)."""
    if (folder / "unet" / "config.json").is_file():
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        if not scheduler_file.is_file():
            raise ModelNotFoundError(f"model '{source}': pipeline layout without scheduler/scheduler_config.json")
        return "unet", _read_json(scheduler_file)
    if (folder / "config.json").is_file():
        scheduler_file = folder / "scheduler_config.json"
        return None, _read_json(scheduler_file) if scheduler_file.is_file() else None
    raise ModelNotFoundError(f"model '{source}': neither unet/config.json nor config.json found")


def _unet_class(config_path: Path, source: str) -> type[UNet2DModel] | type[UNet2DConditionModel]:
    """The diffusers class named in a UNet config.json, restricted to the supported UNets."""
    class_name = _read_json(config_path).get("_class_name")
    if class_name not in UNET_CLASSES:
        raise ConfigError(
            f"model '{source}': UNet class '{class_name}' is not supported; expected {' or '.join(UNET_CLASSES)}"
        )
    return UNET_CLASSES[class_name]


def _ddim_scheduler(scheduler_config: dict[str, Any] | None, clip_sample: bool | None) -> DDIMScheduler:
    """DDIM scheduler over the model's training schedule; ``clip_sample`` clamps the predicted x_0 to [-1, 1]
    (None: as the model's scheduler config says, False without one)."""
    if scheduler_config is None:
        return DDIMScheduler(**DEFAULT_TRAIN_SCHEDULE, clip_sample=bool(clip_sample), clip_sample_range=1.0)
    if clip_sample is None:
        clip_sample = bool(scheduler_config.get("clip_sample", False))
    return DDIMScheduler.from_config(scheduler_config, clip_sample=clip_sample, clip_sample_range=1.0)


def _read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON config file into a dict; a damaged file is a one-line ModelNotFoundError naming it."""
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelNotFoundError(f"model config '{path}': not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"model config '{path}': expected a JSON object, got {type(data).__name__}")
    return data


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set now; huggingface_hub itself only reads it at import time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


