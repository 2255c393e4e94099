"""Every params section and its schema, and the params of each stage.

``SECTIONS`` maps each key of ``params.yaml`` that a step reads to the dataclass that validates it; the
tests check that it covers every section ``conf/`` composes and that each dataclass's defaults equal the
committed YAML. A stage reads its params through :func:`stage_params`, which allows exactly the keys its
step declares in ``PARAMS`` (equal to the stage's ``params`` in dvc.yaml, also checked by the tests).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from omegaconf import DictConfig

from pipeline.classifiers import ClassifierConfig
from pipeline.diffusion.models import ModelConfig
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.io.launch import LaunchConfig
from pipeline.io.params import StageParams
from pipeline.io.tracking import LoggingConfig
from pipeline.steps.edit import EditConfig
from pipeline.steps.evaluate import EvaluateConfig
from pipeline.steps.generate import GenerateConfig
from pipeline.steps.hstats import HStatsConfig
from pipeline.steps.jacobian import JacobianConfig
from pipeline.steps.pca import PCAConfig
from pipeline.steps.preview import PreviewConfig
from pipeline.steps.pullback import PullbackConfig
from pipeline.steps.supervised import SupervisedConfig
from pipeline.steps.supervised_study import SupervisedStudyConfig
from pipeline.steps.toy_dataset import ToyDatasetConfig
from pipeline.steps.toy_quality import ToyQualityConfig
from pipeline.steps.train_classifier import TrainClassifierConfig
from pipeline.steps.train_toy_classifier import TrainToyClassifierConfig
from pipeline.steps.train_toy_model import TrainToyModelConfig
from pipeline.toyfaces.world import ToyFacesConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "sampler": SamplerConfig,
    "classifier": ClassifierConfig,
    "toyfaces": ToyFacesConfig,
    "generate": GenerateConfig,
    "hstats": HStatsConfig,
    "directions.pca": PCAConfig,
    "directions.supervised": SupervisedConfig,
    "directions.jacobian": JacobianConfig,
    "directions.pullback": PullbackConfig,
    "preview": PreviewConfig,
    "evaluate": EvaluateConfig,
    "supervised_study": SupervisedStudyConfig,
    "edit": EditConfig,
    "toy_quality": ToyQualityConfig,
    "train_toy_model": TrainToyModelConfig,
    "train_toy_classifier": TrainToyClassifierConfig,
    "toy_dataset": ToyDatasetConfig,
    "train_classifier": TrainClassifierConfig,
    "logging": LoggingConfig,
    "launch": LaunchConfig,
}
"""params key -> schema, for every section of ``params.yaml`` (``device`` is a plain string)."""


def step_module(stage: str) -> ModuleType:
    """The step of a DVC stage: ``pipeline.steps.<stage>``."""
    return importlib.import_module(f"pipeline.steps.{stage}")


def stage_params(stage: str, params: DictConfig | None = None) -> StageParams:
    """The params of ``stage`` (from ``params.yaml`` unless given): the keys its step declares in ``PARAMS``."""
    return StageParams(stage, step_module(stage).PARAMS, SECTIONS, params)
