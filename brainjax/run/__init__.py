"""The run layer: open a work dir (config, lineage, parameters only) and launch training.

Below evaluation and the language stages, above the trainer: :class:`Run` / :func:`load_model` read a run (or
an export directory, :mod:`brainjax.run.export`), :func:`launch` starts or resumes one.
"""

from brainjax.run.export import export_run, is_export, load_model, load_pretrained
from brainjax.run.launch import data_loaders, launch
from brainjax.run.workdir import LoadedModel, Run, warm_start_from

__all__ = ["LoadedModel", "Run", "data_loaders", "export_run", "is_export", "launch", "load_model", "load_pretrained",
           "warm_start_from"]
