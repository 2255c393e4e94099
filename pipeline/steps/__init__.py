"""One module per DVC stage (stage name = ``stages/<name>.py`` = ``pipeline/steps/<name>.py``), each with the
config dataclass of its params section, ``PARAMS`` (the params keys it reads, equal to the stage's ``params``
in dvc.yaml) and ``run()``, which takes typed configs and loaded objects and returns what the stage writes.
:mod:`~pipeline.steps.sections` maps every params section to its schema."""
