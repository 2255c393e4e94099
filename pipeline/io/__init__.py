"""Infrastructure every layer uses: one-line errors (:mod:`~pipeline.io.errors`), config checks
(:mod:`~pipeline.io.validation`), atomic writes, work caches and training checkpoints (:mod:`~pipeline.io.files`),
params.yaml reading and validation (:mod:`~pipeline.io.params`), W&B and DVC logging (:mod:`~pipeline.io.tracking`),
image grids and PNGs (:mod:`~pipeline.io.images`), shard jobs through Hydra launchers (:mod:`~pipeline.io.launch`),
a ``dvc plots show`` template that draws offline (:mod:`~pipeline.io.plots_page`)."""
