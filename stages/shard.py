"""One shard job of ``generate``, ``label`` or ``evaluate``: a Hydra app whose primary config is params.yaml.

Started by those stages when ``launch.shards > 1`` (see :mod:`pipeline.io.launch`), for example::

    python -m stages.shard --config-dir . --config-name params -m hydra/launcher=joblib \
        +shard.stage=generate +shard.count=3 '+shard.index=range(0,3)'

An ``evaluate`` job also names its directions file: ``+shard.stage=evaluate +shard.method=supervised``.
"""

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from pipeline.io.errors import PipelineError, debug_enabled, run_main
from pipeline.io.launch import check_job_config, job_device
from pipeline.io.params import load_params, load_value
from stages import evaluate, generate, label


class ShardJobFailure(CompactHydraException):
    """A shard job's :class:`PipelineError`, which Hydra reports as its one-line message without a traceback."""


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(job_config: DictConfig) -> None:
    """Check that the job config is params.yaml plus ``shard``, then run the stage's part on its device.

    A PipelineError of the job is reported by Hydra as ``error: <message>`` alone (with its traceback when
    ``HSPACE_DEBUG=1``) and fails the multirun."""
    try:
        params = load_params()
        job = check_job_config(OmegaConf.to_container(job_config, resolve=True), OmegaConf.to_container(params))
        device = job_device(load_value("device", str, params), job.index)
        run_shard = {"generate": generate.run_shard, "label": label.run_shard, "evaluate": evaluate.run_shard}
        run_shard[job.stage](params, job, device)
    except PipelineError as error:
        if debug_enabled():
            raise
        raise ShardJobFailure(f"error: {error}") from None


if __name__ == "__main__":
    run_main(main)
