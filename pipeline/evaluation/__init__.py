"""Judging edits: the per-sample judge of one edit (:mod:`~pipeline.evaluation.judge`) with its broken-image
checks (:mod:`~pipeline.evaluation.broken`; both docs/methods.md, "Judging an edit"), the reading of images
(:mod:`~pipeline.evaluation.readout`), per-image measures (:mod:`~pipeline.evaluation.measures`), the protocol
that judges every directions file alike (:mod:`~pipeline.evaluation.protocol`; docs/methods.md, "Evaluation
protocol") and its summaries (:mod:`~pipeline.evaluation.summary`)."""
