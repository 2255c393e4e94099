"""Applying directions files: :mod:`pipeline.editing.samples` edits the model's own held-out samples (what the
``evaluate`` and ``preview`` stages judge), :mod:`pipeline.editing.images` the user's own images after inverting
them (the ``edit`` stage), both through :mod:`pipeline.editing.guidance` for x_t directions;
:mod:`pipeline.editing.command` is the ``hspace-edit`` command."""
