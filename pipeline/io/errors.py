"""Exceptions whose message is one line naming the bad input, for users of the pipeline."""


class PipelineError(Exception):
    """Base class: a user-facing error whose ``str`` is one line naming the cause."""


class ConfigError(PipelineError, ValueError):
    """A configuration value (or function argument) is unknown, of the wrong type or out of range."""


class ModelNotFoundError(PipelineError, FileNotFoundError):
    """A model id or folder cannot be resolved to weights available on this machine."""


class NumericalError(PipelineError, FloatingPointError):
    """A model produced NaN or inf; the message names where (for example the timestep)."""
