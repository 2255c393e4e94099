"""Judging edits: per-image measures and realism (:mod:`~pipeline.evaluation.measures`), matched distortion
(:mod:`~pipeline.evaluation.bisection`), the classifier's read-out of images (:mod:`~pipeline.evaluation.readout`),
the checks of supervised directions (:mod:`~pipeline.evaluation.supervised`), the per-sample judge of an edit
(:mod:`~pipeline.evaluation.judge`) with its broken-image checks (:mod:`~pipeline.evaluation.broken`; both
docs/methods.md, "Judging an edit") and the protocol that scores every directions file alike
(:mod:`~pipeline.evaluation.protocol`; docs/methods.md, "Evaluation protocol")."""
