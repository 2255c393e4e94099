"""The diffusion model every other module receives, and how its params section loads it.

:class:`DiffusionModel` holds a denoising UNet with its DDIM scheduler and, depending on the kind of model, an
autoencoder and a text encoder: pixel DDPMs (UNet2DModel), unconditional latent DMs (an autoencoder decodes
x_0) and text-conditioned latent DMs (Stable Diffusion: UNet2DConditionModel + AutoencoderKL + CLIP text
encoder), whose prompts are encoded once at load time. :meth:`DiffusionModel.eps` is the one way every module
asks the UNet for a noise prediction, so prompts, classifier-free guidance and the performance options
(autocast, channels_last, compiled blocks) are handled in one place.

:func:`load_model` (or :func:`open_model` for the ``model`` params section, :class:`ModelConfig`) builds one;
the way a model's files are found (pipeline folder, bare UNet folder, hub cache) is in
:mod:`pipeline.diffusion.loading`.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

from pipeline.diffusion.loading import TEXT_SUBFOLDERS, compile_unet_blocks, load_parts
from pipeline.io.artefacts import TOY_MODEL
from pipeline.io.errors import ConfigError, ModelNotFoundError

DEFAULT_LOCATION = "after"
"""Default h-space site: the output of the UNet's middle block (see :mod:`pipeline.diffusion.hspace`)."""

STUDY_MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"
"""The study's model configs (``conf/model/*.yaml``), where :func:`load_model` finds a known model's settings."""

DECODE_BATCH_SIZE = 16
"""Latents decoded per autoencoder call (bounds the decoder's activation memory at 256+ px)."""

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""``model.autocast`` values: mixed precision of the UNet calls that need no exactness (sampling, edit decodes)."""

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""``model.compile`` values: ``torch.compile`` modes of the UNet's blocks for the calls that need no exactness."""

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,  # exactness checks and benchmarks: accuracy below float32 rounding
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""``model.dtype`` values: the dtype the UNet (and autoencoder and text encoder) run in."""


@dataclass
class TextPrompts:
    """The prompts of a text-conditioned model (Stable Diffusion; the ``model.text`` params section).

    ``prompt`` conditions every denoising step of generation and of edit decodes. With ``guidance_scale`` > 1
    every such step is classifier-free guided, eps = eps(negative_prompt) + s (eps(prompt) - eps(negative_prompt)),
    from one UNet call on a doubled batch [negative; prompt]; <= 1 means no guidance (the prompt alone).
    ``edit_prompt`` conditions only the pullback maps of paper B (the local basis d h / d z_t and the x-space
    guidance eps), never guided. Paper B's SD settings: every prompt "" and guidance_scale 0.
    """

    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float = 1.0
    edit_prompt: str = ""

    def __post_init__(self) -> None:
        if not self.guidance_scale >= 0:  # also refuses NaN
            raise ConfigError(f"params: model.text.guidance_scale={self.guidance_scale!r}: must be >= 0")

    @property
    def guided(self) -> bool:
        """True when generation uses classifier-free guidance (guidance_scale > 1)."""
        return self.guidance_scale > 1


@dataclass(frozen=True)
class TextConditioning:
    """Encoded prompts of one kind of UNet call: ``prompt`` [1, L, E] text-encoder states and, for a
    classifier-free guided call, ``negative`` [1, L, E] with its ``guidance_scale``; both in the UNet's dtype."""

    prompt: torch.Tensor
    negative: torch.Tensor | None = None
    guidance_scale: float = 1.0

    @property
    def branches(self) -> int:
        """Conditioning branches stacked in the UNet's batch: 2 with guidance ([negative; prompt]), else 1."""
        return 1 if self.negative is None else 2


@dataclass
class DiffusionModel:
    """A denoising UNet with the DDIM scheduler that defines its noise schedule.

    ``unet`` predicts epsilon for x_t of shape [B, *sample_shape] at integer timestep t; it is in eval mode
    with frozen parameters. Ask for predictions through :meth:`eps`, which adds the text conditioning.
    ``scheduler`` is used only for ``alphas_cumprod``, ``final_alpha_cumprod`` and its timestep grid.
    ``vae`` is the autoencoder of a latent model (x_t are latents; :meth:`images` decodes them) and None for
    a pixel-space model. A text-conditioned model also has ``text_encoder`` and ``tokenizer``, its
    ``prompts`` and their encodings: ``conditioning`` for generation and decoding, ``edit_conditioning``
    for the pullback maps (see :class:`TextPrompts`); all None for an unconditional model. ``autocast``
    (bfloat16 or float16) runs the UNet calls that need no exactness under mixed precision; spectra ask for
    ``exact`` calls. ``channels_last``: the UNet and its inputs use the NHWC memory format (faster convolutions
    on GPUs with tensor cores; same results up to rounding). ``compile``: the ``torch.compile`` mode of the
    UNet's blocks (see :func:`pipeline.diffusion.loading.compile_unet_blocks`), or None; ``exact`` calls run
    them eagerly.
    """

    unet: UNet2DModel | UNet2DConditionModel
    scheduler: DDIMScheduler
    model_id: str
    device: torch.device
    dtype: torch.dtype
    vae: Any | None = None
    text_encoder: Any | None = None
    tokenizer: Any | None = None
    prompts: TextPrompts | None = None
    conditioning: TextConditioning | None = None
    edit_conditioning: TextConditioning | None = None
    autocast: torch.dtype | None = None
    channels_last: bool = False
    compile: str | None = None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of x_t, the tensor the UNet denoises (pixels, or latents for a latent model)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet.config.in_channels), int(height), int(width))

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels of the images the model makes and inverts: x_t's own size for a pixel model, times
        the autoencoder's downsampling factor 2^(levels - 1) for a latent one."""
        _, height, width = self.sample_shape
        if self.vae is None:
            return height, width
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return height * factor, width * factor

    @property
    def latent(self) -> bool:
        """True when x_t lives in an autoencoder's latent space."""
        return self.vae is not None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space x_0 [B, *sample_shape] (float32, CPU) of images [B, 3, H', W'] in [0, 1], the inverse of
        :meth:`images` for inverting real images: pixels mapped to [-1, 1], or for a latent model the
        autoencoder's encoding times its scaling factor (the posterior mean of an AutoencoderKL, the
        unquantised latents of a VQModel): sampling the posterior would make the inversion of an image depend
        on a seed, the mean is reproducible."""
        pixels = images.float() * 2 - 1
        if self.vae is None:
            return pixels.cpu()
        scale = float(self.vae.config.scaling_factor)
        encoded = []
        for chunk in pixels.split(DECODE_BATCH_SIZE):
            output = self.vae.encode(chunk.to(self.device, self.vae.dtype))
            latents = output.latent_dist.mode() if hasattr(output, "latent_dist") else output.latents
            encoded.append(latents.float().cpu() * scale)
        return torch.cat(encoded)

    def branches(self, edit: bool = False) -> int:
        """Batch copies per sample in the UNet calls of :meth:`eps` (2 under classifier-free guidance, else 1);
        an h-space hook on those calls needs it (:meth:`pipeline.diffusion.hspace.HSpaceHook.for_model`)."""
        conditioning = self._conditioning(edit)
        return 1 if conditioning is None else conditioning.branches

    def eps(self, x: torch.Tensor, timestep: int, edit: bool = False, exact: bool = False) -> torch.Tensor:
        """Predicted noise [B, *sample_shape] of x_t [B, *sample_shape] at ``timestep``, in x's dtype.

        Differentiable (no grad mode is set here). A text-conditioned UNet sees the generation prompt, with
        classifier-free guidance when configured (one call on the doubled batch [x; x], combined as
        eps_u + s (eps_c - eps_u)), or with ``edit=True`` the edit prompt without guidance. The call runs
        under :attr:`autocast` and the compiled blocks unless ``exact`` (Jacobian products and spectra, which
        run in the eager, unfused kernels).
        """
        conditioning = self._conditioning(edit)
        guided = conditioning is not None and conditioning.negative is not None
        inputs = x.to(self.unet.dtype)
        extra = {}
        if conditioning is not None:
            states = conditioning.prompt.expand(len(x), -1, -1)
            if guided:
                inputs = torch.cat([inputs, inputs])
                states = torch.cat([conditioning.negative.expand(len(x), -1, -1), states])
            extra["encoder_hidden_states"] = states
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        mixed = self.autocast is not None and not exact
        eager = torch.compiler.set_stance("force_eager") if exact and self.compile else nullcontext()
        with eager, torch.autocast(self.device.type, dtype=self.autocast, enabled=mixed):
            output = self.unet(inputs, timestep, **extra).sample.to(x.dtype)
        if not guided:
            return output
        unconditional, conditional = output.chunk(2)
        return unconditional + conditioning.guidance_scale * (conditional - unconditional)

    def _conditioning(self, edit: bool) -> TextConditioning | None:
        """The conditioning of generation and decoding, or with ``edit`` that of the pullback maps."""
        return self.edit_conditioning if edit else self.conditioning

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text-encoder hidden states [1, L, E] of ``text`` (padded or truncated to the tokenizer's L), in the
        UNet's dtype on its device; ConfigError for a model without a text encoder."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ConfigError(f"model '{self.model_id}': not text-conditioned, so it takes no prompt")
        tokens = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        states = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return states.to(self.unet.dtype)

    @torch.no_grad()
    def images(self, x_0: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H', W'] in [0, 1] on the CPU of final samples x_0 [B, *sample_shape] in model space:
        pixels mapped from [-1, 1], or latents divided by the autoencoder's scaling factor and decoded."""
        pixels = x_0
        if self.vae is not None:
            scale = float(self.vae.config.scaling_factor)
            decoded = [
                self.vae.decode(chunk.to(self.device, self.vae.dtype) / scale).sample.cpu()
                for chunk in x_0.split(DECODE_BATCH_SIZE)
            ]
            pixels = torch.cat(decoded)
        return ((pixels.float() + 1) / 2).clamp(0, 1).cpu()


def resolve_device(name: str) -> torch.device:
    """Map "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N" to a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError(f"device '{name}': unknown; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': CUDA is not available on this machine; use 'cpu' or 'auto'")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def resolve_dtype(name: str) -> torch.dtype:
    """Map a :data:`DTYPES` name ("float64", "float32", "float16", "bfloat16") to the torch dtype the UNet
    runs in."""
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}': unknown; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(
    source: str,
    device: str = "auto",
    dtype: str = "float32",
    clip_sample: bool | None = None,
    text: TextPrompts | None = None,
    autocast: str = "none",
    channels_last: bool = False,
    compile: str = "none",
) -> DiffusionModel:
    """Load a UNet and a DDIM scheduler from a local folder or a hub id, ready for inference.

    ``source`` is either a folder, laid out as a diffusers pipeline (``model_index.json``, ``unet/``,
    ``scheduler/``) or as a bare UNet (``config.json`` and weights at the top, optionally with a
    ``scheduler_config.json``), or a hub id 'owner/name' whose files are fetched through the Hugging Face
    cache (safetensors preferred; no remote code is ever run; see :mod:`pipeline.diffusion.loading`). A bare
    folder without a scheduler config gets :data:`~pipeline.diffusion.loading.DEFAULT_TRAIN_SCHEDULE`. The
    scheduler is always ``DDIMScheduler.from_config`` of the
    model's scheduler config with ``clip_sample`` as given: True clamps the predicted x_0 to [-1, 1] at every
    step, which keeps a small or undertrained model's samples in range; False (the reference code's choice for
    well-trained models) keeps it unclamped. None (the default) takes the study's setting for ``source`` (the
    ``clip_sample`` of the ``conf/model/*.yaml`` that names it, :func:`study_clip_sample`), else the model's own
    scheduler config, else False; so the library decodes a model as the DAG does. Set ``HF_HUB_OFFLINE=1`` to
    forbid network access.

    A Stable Diffusion pipeline folder (``text_encoder/``, ``tokenizer/``, ``vae/``) also loads its CLIP text
    encoder and encodes ``text`` (default: :class:`TextPrompts`, the empty prompt without guidance); ``text``
    given for an unconditional model is a ConfigError. ``autocast`` ("none", "bfloat16", "float16"),
    ``channels_last`` and ``compile`` (one of :data:`COMPILE_MODES`) are the performance options of
    :class:`DiffusionModel` (all work on CPU too; compiling needs a C++ compiler there).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if autocast not in AUTOCAST_DTYPES:
        raise ConfigError(f"params: model.autocast={autocast!r}: unknown; expected one of {', '.join(AUTOCAST_DTYPES)}")
    if compile not in COMPILE_MODES:
        raise ConfigError(f"params: model.compile={compile!r}: unknown; expected one of {', '.join(COMPILE_MODES)}")
    if clip_sample is None:
        clip_sample = study_clip_sample(source)
    unet, scheduler, vae, text_encoder, tokenizer = load_parts(source, torch_dtype, clip_sample)
    if scheduler.config.prediction_type != "epsilon":
        raise ConfigError(
            f"model '{source}': prediction_type '{scheduler.config.prediction_type}' is not supported; "
            "expected 'epsilon'"
        )
    if isinstance(unet, UNet2DConditionModel) and text_encoder is None:
        raise ModelNotFoundError(
            f"model '{source}': a text-conditioned UNet2DConditionModel needs a pipeline folder with "
            f"{' and '.join(f'{name}/' for name in TEXT_SUBFOLDERS)} (a Stable Diffusion layout)"
        )
    if text is not None and text_encoder is None:
        raise ConfigError(f"params: model.text: model '{source}' is not text-conditioned; remove model.text")
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.eval().requires_grad_(False).to(torch_device)
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile != "none":
        compile_unet_blocks(unet, compile)
    model = DiffusionModel(
        unet=unet, scheduler=scheduler, model_id=source, device=torch_device, dtype=torch_dtype, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, autocast=AUTOCAST_DTYPES[autocast],
        channels_last=channels_last, compile=None if compile == "none" else compile,
    )  # fmt: skip
    if text_encoder is not None:
        _encode_prompts(model, text or TextPrompts())
    return model


def study_clip_sample(source: str, configs: Path = STUDY_MODEL_CONFIGS) -> bool | None:
    """The ``clip_sample`` of the study's model config (a ``*.yaml`` of ``configs``) whose ``source`` is
    ``source`` (the same hub id, or the same folder), or None when none names it (or ``configs`` is absent, as in
    a non-editable install)."""
    from omegaconf import OmegaConf

    root = configs.parents[1]
    wanted = Path(source).expanduser()
    wanted = wanted.resolve() if wanted.exists() else None
    for path in sorted(configs.glob("*.yaml")) if configs.is_dir() else []:
        config = OmegaConf.load(path)
        named = str(config.get("source", ""))
        folder = root / named
        same_folder = wanted is not None and folder.exists() and folder.resolve() == wanted
        if (named == source or same_folder) and "clip_sample" in config:
            return bool(config.clip_sample)
    return None


def _encode_prompts(model: DiffusionModel, prompts: TextPrompts) -> None:
    """Set ``model.prompts`` and encode them (each distinct text once) into its generation and edit conditionings."""
    texts = {prompts.prompt, prompts.edit_prompt} | ({prompts.negative_prompt} if prompts.guided else set())
    encoded = {text: model.encode_prompt(text) for text in texts}
    negative = encoded[prompts.negative_prompt] if prompts.guided else None
    model.prompts = prompts
    model.conditioning = TextConditioning(encoded[prompts.prompt], negative, prompts.guidance_scale)
    model.edit_conditioning = TextConditioning(encoded[prompts.edit_prompt])


@dataclass
class ModelConfig:
    """The ``model`` params section: which diffusion model, its dtype, the h-space site, whether sampling
    clamps the predicted x_0 to [-1, 1] (see :func:`load_model`), and for a text-conditioned model (Stable
    Diffusion) its prompts and guidance (``text``, see :class:`TextPrompts`; absent for unconditional models).

    Performance: ``autocast`` ("none" | "bfloat16" | "float16") runs sampling and edit decodes in mixed
    precision (Jacobians and spectra stay in ``dtype``), ``channels_last`` the NHWC memory format, ``compile``
    ("none" | "default" | "reduce-overhead" | "max-autotune") compiles the UNet's layers for those calls
    (Jacobians and spectra run eagerly).
    """

    source: str = TOY_MODEL
    dtype: str = "float32"
    hspace_location: str = DEFAULT_LOCATION
    clip_sample: bool = True
    text: TextPrompts | None = None
    autocast: str = "none"
    channels_last: bool = False
    compile: str = "none"


def open_model(cfg: ModelConfig, device: str) -> DiffusionModel:
    """Load the configured diffusion model on ``device``."""
    return load_model(
        cfg.source, device=device, dtype=cfg.dtype, clip_sample=cfg.clip_sample, text=cfg.text,
        autocast=cfg.autocast, channels_last=cfg.channels_last, compile=cfg.compile,
    )  # fmt: skip

