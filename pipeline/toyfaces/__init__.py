"""The embedded ToyFaces world: procedurally drawn faces whose attributes and factors are known exactly
(:mod:`~pipeline.toyfaces.world`), the attribute classifier trained on it (:mod:`~pipeline.toyfaces.classifier`)
and the training helpers of the two training steps (:mod:`~pipeline.toyfaces.training`)."""
