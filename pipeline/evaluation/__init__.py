"""Judging edits: per-image measures and realism (:mod:`~pipeline.evaluation.measures`), matched distortion
(:mod:`~pipeline.evaluation.bisection`), the classifier's read-out of images (:mod:`~pipeline.evaluation.readout`),
the checks of supervised directions (:mod:`~pipeline.evaluation.supervised`) and the protocol that scores every
directions file alike (:mod:`~pipeline.evaluation.protocol`; docs/methods.md, "Evaluation protocol")."""
