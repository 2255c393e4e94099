"""hspace-directions: discover and evaluate semantic directions in diffusion models.

The library behind the DVC stages, importable from a notebook without Hydra or DVC. Subpackages by role
(docs/architecture.md), lower layers first:

* :mod:`pipeline.io` — errors, config validation, atomic files and work caches, params, tracking, images,
  shard launching.
* :mod:`pipeline.diffusion` — ``load_model`` / ``open_model`` and :class:`DiffusionModel`, DDIM sampling with
  h capture and edits (``sample``, ``decode``), inversion of real images, h-space hooks.
* :mod:`pipeline.linalg` — Jacobian operators (batched J v, J^T u) and the SVD solvers that read them.
* :mod:`pipeline.data` — the sharded samples store, streaming h statistics, the label table.
* :mod:`pipeline.directions` — the directions file (``Directions``, ``save_directions``,
  ``load_directions``), the method registry, one module per method, subspace geometry.
* :mod:`pipeline.classifiers` — attribute classifiers (``load_classifier``, ``classify``).
* :mod:`pipeline.labellers` — labellers for any model: the attribute CNN (``folder``), zero-shot CLIP, the CelebA
  predictor, the label table's calibration, users' label files.
* :mod:`pipeline.editing` — applying any directions file: to held-out samples (``samples``: ``held_out``,
  ``edit``), to the user's own images (``images``), the ``hspace-edit`` command (``command``).
* :mod:`pipeline.evaluation` — measures, matched distortion, the classifier read-out, the protocol.
* :mod:`pipeline.toyfaces` — the embedded ToyFaces world, its classifier and training helpers.
* :mod:`pipeline.steps` — one module per DVC stage: its config dataclass, ``PARAMS`` and ``run()``.

A typical notebook session::

    from pipeline.diffusion.models import ModelConfig, open_model
    from pipeline.diffusion.sampling import SamplerConfig
    from pipeline.directions import load_directions
    from pipeline.editing.samples import edit, held_out

    model = open_model(ModelConfig(), device="cpu")  # the study's defaults: the ToyFaces DDPM
    directions = load_directions("directions/supervised.safetensors")
    sampler = SamplerConfig()  # the grid and injection the directions were made with
    images = edit(model, directions, directions.names.index("smiling"), [-2.0, 0.0, 2.0],
                  held_out(model, sampler, seed_offset=90_000_000, count=4), sampler)  # [3, 4, 3, H, W]
"""
