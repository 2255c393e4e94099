"""Diffusion models and the DDIM walks that sample, decode, edit and invert them.

Public API by module (import from the module; this package re-exports nothing):

``pipeline.diffusion.models``: the model every other module receives.
    :class:`~pipeline.diffusion.models.DiffusionModel` (UNet + DDIM scheduler, optional autoencoder and text
    encoder; ``eps`` is the one noise prediction, ``images`` / ``encode_images`` map to and from pixels),
    :class:`~pipeline.diffusion.models.ModelConfig` (the ``model`` params section) with
    :func:`~pipeline.diffusion.models.open_model`, :func:`~pipeline.diffusion.models.load_model`,
    :class:`~pipeline.diffusion.models.TextPrompts`, :class:`~pipeline.diffusion.models.TextConditioning`,
    :func:`~pipeline.diffusion.models.resolve_device`, :func:`~pipeline.diffusion.models.resolve_dtype`,
    :data:`~pipeline.diffusion.models.DEFAULT_LOCATION`.

``pipeline.diffusion.loading``: finding and loading a model's files (local folder or hub id).
    :func:`~pipeline.diffusion.loading.load_parts`, :class:`~pipeline.diffusion.loading.LoadedParts`,
    :func:`~pipeline.diffusion.loading.compile_unet_blocks`, :data:`~pipeline.diffusion.loading.KNOWN_HUB_MODELS`,
    :data:`~pipeline.diffusion.loading.DEFAULT_TRAIN_SCHEDULE`.

``pipeline.diffusion.hspace``: capturing and editing h with forward hooks.
    :class:`~pipeline.diffusion.hspace.HSpaceHook`, :func:`~pipeline.diffusion.hspace.hspace_shape`,
    :func:`~pipeline.diffusion.hspace.hspace_locations`, :func:`~pipeline.diffusion.hspace.check_location`,
    :func:`~pipeline.diffusion.hspace.h_of_x` (x_t -> h), :func:`~pipeline.diffusion.hspace.eps_of_h` (h -> eps).

``pipeline.diffusion.ddim``: the grid, the step, the noise and the settings of a walk.
    :class:`~pipeline.diffusion.ddim.DecodeSettings` (steps, eta, h location, injection, batch size, h dtype),
    :class:`~pipeline.diffusion.ddim.SamplerConfig` (the ``sampler`` params section; ``decode_settings``),
    :class:`~pipeline.diffusion.ddim.DDIMGrid`, :func:`~pipeline.diffusion.ddim.ddim_grid`,
    :func:`~pipeline.diffusion.ddim.ddim_step`, :func:`~pipeline.diffusion.ddim.asyrp_equivalent_scales`,
    :func:`~pipeline.diffusion.ddim.initial_noise`, :func:`~pipeline.diffusion.ddim.variance_noise_seed`,
    :func:`~pipeline.diffusion.ddim.to_image_range`.

``pipeline.diffusion.sampling``: generating and decoding, with h capture and h edits.
    :func:`~pipeline.diffusion.sampling.sample`, :func:`~pipeline.diffusion.sampling.decode`,
    :func:`~pipeline.diffusion.sampling.decode_scales`, :func:`~pipeline.diffusion.sampling.denoise_steps`,
    :class:`~pipeline.diffusion.sampling.SampleBatch`; it re-exports the names of ``ddim`` listed above.

``pipeline.diffusion.inversion``: real images to the noise that decodes to them.
    :func:`~pipeline.diffusion.inversion.invert_ddim`, :func:`~pipeline.diffusion.inversion.invert_edit_friendly`.

The method behind each is described in ``docs/methods.md`` ("DDIM sampling", "Injecting an h edit",
"Inversion"). Modules import in the order models <- loading, hspace <- ddim <- sampling <- inversion
(``models`` uses ``loading``; everything else builds on ``models``).
"""
