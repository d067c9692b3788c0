"""The run layer: open a work dir (config, lineage, parameters only) and launch training.

Below evaluation and the language stages, above the trainer: :class:`Run` / :func:`load_model` read a run,
:func:`launch` starts or resumes one.
"""

from brainjax.run.launch import data_loaders, launch
from brainjax.run.workdir import LoadedModel, Run, load_model, warm_start_from

__all__ = ["LoadedModel", "Run", "data_loaders", "launch", "load_model", "warm_start_from"]
