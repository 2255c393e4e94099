"""The study's data layer: the sharded samples store (seeds, noise, images and h at every step; atomic,
resumable, self-describing shards), streaming h statistics over it (:mod:`~pipeline.data.hstats`), and the
label table of classifier scores (:mod:`~pipeline.data.labels`). docs/architecture.md gives the contracts."""
