"""Editing the user's own images: read and fit them to the model, invert them, and apply any directions file as
its method defines (docs/methods.md, "Editing your own images").

* :func:`~pipeline.io.images.read_images` loads image files at the model's resolution (a centre crop when asked;
  a clear error on an aspect ratio the model cannot serve).
* :func:`invert_images` inverts them on the directions' own grid (``origin.sampler_steps``, h site
  ``origin.hspace_location``): edit-friendly DDPM inversion by default (exact: the inverted noise re-decodes the
  image up to float error), DDIM inversion as an option (deterministic, approximate); the reconstruction and its
  error come with it.
* :func:`edit_images` applies directions along each inverted trajectory: h-space directions by injection at every
  step (``sampler.injection``), x_T directions by shifting the inverted x_T, Jacobian directions recomputed on the
  image's own trajectory (the file gives steps, k, apply, source step and unit), local pullback directions from
  the local basis at the image's own x_t, and global pullback directions as they are, both by x-space guidance at
  the file's edit step, then denoised along the inversion's own noise.

Every edit of an image shares its inverted noise with the unedited reconstruction (scale 0), so differences come
from the edit alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.inversion import EDIT_FRIENDLY_ETA, invert_ddim, invert_edit_friendly
from pipeline.diffusion.models import DEFAULT_LOCATION, DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, decode
from pipeline.directions.format import Directions
from pipeline.directions.jacobian import jacobian_directions, jacobian_spectra
from pipeline.directions.methods import REGISTRY
from pipeline.directions.pullback import local_basis, states_at
from pipeline.editing.guidance import Guidance
from pipeline.editing.inversions import INVERSIONS
from pipeline.editing.samples import HeldOut, edit
from pipeline.io.errors import ConfigError
from pipeline.linalg import SolverConfig

IMAGE_SPECIFIC = {"jacobian": "k", "pullback": "v"}
"""Methods whose directions belong to one image (recomputed on each input) and the prefix of their names:
"k0", "k1", ... (Jacobian singular vectors), "v0", "v1", ... (local pullback basis)."""


@dataclass
class Inverted:
    """Images inverted into the noise that re-decodes them.

    Attributes:
        images: [N, 3, H, W] the inputs in [0, 1].
        x_T: [N, *sample_shape] inverted starting noise.
        noise: [N, T, *sample_shape] the inverted variance noise z (edit-friendly), None for DDIM (eta 0).
        settings: the grid, eta, h site, injection and batch size of the inversion; decodes use the same.
        reconstruction: [N, 3, H, W] the unedited decode of (x_T, noise), in [0, 1].
        method: "edit_friendly" or "ddim".
    """

    images: torch.Tensor
    x_T: torch.Tensor
    noise: torch.Tensor | None
    settings: DecodeSettings
    reconstruction: torch.Tensor
    method: str

    @property
    def reconstruction_mse(self) -> torch.Tensor:
        """[N] mean squared error of each reconstruction against its input, pixels in [0, 1]."""
        return (self.reconstruction - self.images).pow(2).flatten(1).mean(dim=1)

    def held_out(self, index: Sequence[int] | None = None) -> HeldOut:
        """The inverted noise of the images at ``index`` (default: all) in the form the editors take; the
        "seeds" are the images' positions."""
        index = list(range(len(self.x_T))) if index is None else list(index)
        noise = None if self.noise is None else self.noise[index]
        return HeldOut(index, self.x_T[index], noise)

    @property
    def sampler(self) -> SamplerConfig:
        """The inversion's grid, eta, batch size and injection as a sampler section (for the editors)."""
        settings = self.settings
        return SamplerConfig(steps=settings.steps, eta=settings.eta, batch_size=settings.batch_size,
                             injection=settings.injection)  # fmt: skip


def inversion_settings(directions: Directions, sampler: SamplerConfig, method: str) -> DecodeSettings:
    """The decode settings to invert and edit with for ``directions``: its own grid (``origin.sampler_steps``,
    else ``sampler.steps``) and h site (``origin.hspace_location``), ``sampler``'s injection and batch size, and
    the inversion's eta (:data:`~pipeline.diffusion.inversion.EDIT_FRIENDLY_ETA` for edit-friendly, 0 for DDIM)."""
    if method not in INVERSIONS:
        raise ConfigError(f"edit.inversion {method!r}: expected one of {', '.join(INVERSIONS)}")
    return DecodeSettings(
        steps=directions.num_steps or sampler.steps,
        eta=EDIT_FRIENDLY_ETA if method == "edit_friendly" else 0.0,
        location=directions.origin.hspace_location or DEFAULT_LOCATION,
        injection=sampler.injection,
        batch_size=sampler.batch_size,
    )


def invert_images(
    model: DiffusionModel, images: torch.Tensor, settings: DecodeSettings, method: str, seed: int = 0
) -> Inverted:
    """Invert images [N, 3, H, W] in [0, 1] with ``method`` ("edit_friendly": its noise drawn from ``seed``;
    "ddim") on ``settings``' grid and decode them back (the reconstruction)."""
    x_0 = model.encode_images(images)
    if method == "edit_friendly":
        batch = invert_edit_friendly(model, x_0, settings, seed=seed)
    elif method == "ddim":
        batch = invert_ddim(model, x_0, settings)
    else:
        raise ConfigError(f"edit.inversion {method!r}: expected one of {', '.join(INVERSIONS)}")
    reconstruction = model.images(decode(model, batch.x_T, batch.noise, settings, capture_steps=None).x_0)
    return Inverted(images.float().cpu(), batch.x_T, batch.noise, settings, reconstruction, method)


@dataclass
class EditedRow:
    """One direction applied to one image at every scale: ``images`` [S, 3, H, W] in [0, 1]; ``direction`` its
    label (the file's name, or "k0" / "v0" ... for an image-specific method), ``target`` the attribute it targets
    (targeted methods) or None."""

    image: int
    direction: str
    target: str | None
    images: torch.Tensor


@dataclass
class ImageSpecificSettings:
    """What recomputing image-specific directions needs besides the file: the Jacobian masks, one [1, H, W] (or
    None, the whole image) per input, and the Krylov solvers of the Jacobian and pullback spectra."""

    masks: list[torch.Tensor | None] | None = None
    jacobian_solver: SolverConfig | None = None
    pullback_solver: SolverConfig | None = None


def direction_choices(directions: Directions) -> list[str]:
    """The labels :func:`edit_images` accepts for a file: its names, or for an image-specific method the per-image
    labels ("k0", ... / "v0", ...), as many as the file has per sample."""
    prefix = IMAGE_SPECIFIC.get(directions.method)
    if prefix is None:
        return list(directions.names)
    samples = len(directions.extra.get("seeds") or [None])
    per_sample = directions.num_directions // samples
    return [f"{prefix}{k}" for k in range(per_sample)]


def select_directions(directions: Directions, names: Sequence[str], limit: int) -> list[str]:
    """``names`` checked against :func:`direction_choices`, or its first ``limit`` when ``names`` is empty."""
    choices = direction_choices(directions)
    if not names:
        return choices[:limit]
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ConfigError(f"edit.names {unknown}: not in the {directions.method} file; expected some of {choices}")
    return list(names)


def edit_images(
    model: DiffusionModel,
    directions: Directions,
    inverted: Inverted,
    names: Sequence[str],
    scales: Sequence[float],
    image_specific: ImageSpecificSettings | None = None,
    progress: bool = False,
) -> list[EditedRow]:
    """Every image of ``inverted`` edited with each direction of ``names`` (labels from
    :func:`select_directions`) at every scale of ``scales`` (the file's own unit: natural units for h and x_T
    directions, guidance strength c for pullback directions; 0 gives the reconstruction), as the method defines
    (module docstring). Rows are image-major: (image 0, name 0), (image 0, name 1), ... Image-specific directions
    are computed once per image for all ``names``; ``progress`` shows a bar over images (directions for h and x_T
    files, whose edits are batched over images)."""
    image_specific = image_specific or ImageSpecificSettings()
    target = REGISTRY[directions.method].targets
    count = len(inverted.x_T)
    if directions.method == "jacobian":
        rows = []
        for i in tqdm(range(count), desc="edit (own spectra)", unit="image", disable=not progress):
            own = _jacobian_file(model, directions, inverted, i, image_specific)
            one = inverted.held_out([i])
            rows += [
                EditedRow(i, name, None, edit(model, own, int(name[1:]), scales, one, inverted.sampler)[:, 0])
                for name in names
            ]
        return rows
    if directions.space == "x_t":
        return _guided_rows(model, directions, inverted, names, scales, image_specific, progress)
    samples, sampler = inverted.held_out(), inverted.sampler
    edited = {
        name: edit(model, directions, directions.index(name), scales, samples, sampler)
        for name in tqdm(names, desc="edit", unit="direction", disable=not progress)
    }
    return [
        EditedRow(i, name, name if target else None, edited[name][:, i]) for i in range(count) for name in names
    ]


def _jacobian_file(
    model: DiffusionModel, directions: Directions, inverted: Inverted, i: int, settings: ImageSpecificSettings
) -> Directions:
    """The Jacobian directions of image ``i``, from the spectra of its own inverted trajectory at the file's steps
    with the file's k, apply mode, source step and unit."""
    extra = directions.extra
    missing = [key for key in ("apply", "source_step", "unit") if key not in extra]
    if missing or directions.origin.steps is None:
        raise ConfigError(f"directions '{directions.method}': extra lacks {missing or ['origin.steps']}")
    noise = None if inverted.noise is None else inverted.noise[i]
    masks = settings.masks
    spectra = jacobian_spectra(
        model, inverted.x_T[i], noise, steps=inverted.settings.steps, eta=inverted.settings.eta,
        location=inverted.settings.location, step_indices=directions.origin.steps.tolist(),
        k=len(direction_choices(directions)), solver=settings.jacobian_solver or SolverConfig(),
        mask=None if masks is None else masks[i],
    )  # fmt: skip
    return jacobian_directions(
        [spectra], [i], directions.origin, apply=str(extra["apply"]), source_step=int(extra["source_step"]),
        unit=float(extra["unit"]),
    )  # fmt: skip


def _guided_rows(
    model: DiffusionModel,
    directions: Directions,
    inverted: Inverted,
    names: Sequence[str],
    scales: Sequence[float],
    settings: ImageSpecificSettings,
    progress: bool,
) -> list[EditedRow]:
    """x-space guidance at the file's edit step from each image's own x_t, along the image's own local basis
    vector (method "pullback") or the file's direction, then denoising along the inversion's noise."""
    grid_settings = inverted.settings
    guidance = Guidance.of(model, directions, grid_settings.steps, f"directions '{directions.method}'")
    step = guidance.step
    states = states_at(model, inverted.x_T, inverted.noise, steps=grid_settings.steps, eta=grid_settings.eta,
                       step_indices=[step])[step]  # fmt: skip
    own_basis = directions.method in IMAGE_SPECIFIC
    rows = []
    strengths = torch.as_tensor(list(scales), dtype=torch.float32)
    for i in tqdm(range(len(states)), desc="edit (guidance)", unit="image", disable=not progress):
        if own_basis:
            basis = local_basis(
                model, states[i], step, steps=grid_settings.steps, n=len(direction_choices(directions)),
                location=grid_settings.location, solver=settings.pullback_solver or SolverConfig(),
            ).v  # fmt: skip
        for name in names:
            vector = basis[int(name[1:])] if own_basis else directions.delta(name, 1.0)
            images = guidance.edit(
                model, states, torch.full((len(strengths),), i), vector, strengths, steps=grid_settings.steps,
                eta=grid_settings.eta, noise=inverted.noise, batch_size=grid_settings.batch_size,
            )  # fmt: skip
            rows.append(EditedRow(i, name, None, images))
    return rows
