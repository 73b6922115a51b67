"""Run directory, stage order, caching and resume."""

from edgeft.pipeline.rundir import STAGES, RunDir
from edgeft.pipeline.run import Pipeline, RunResult, run

__all__ = ["STAGES", "RunDir", "Pipeline", "RunResult", "run"]
