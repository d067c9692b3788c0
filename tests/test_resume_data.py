"""Resuming on other training data is refused unless asked for; a batch larger than the epoch warns."""

import pytest
from _trainer_utils import tiny_dataset

from brainjax.cli import main as cli

TINY = ["--preset", "tiny", "--set", "model.max_parcels=8", "--set", "train.figure=false",
        "--set", "train.checkpoint_every=2", "--set", "train.eval_every=0"]


@pytest.mark.slow
def test_other_data_on_resume_needs_allow_data_change(tmp_path, capsys):
    first, other = tiny_dataset(tmp_path / "a"), tiny_dataset(tmp_path / "b", subjects=6, seed=1)
    work = tmp_path / "run"
    assert cli(["pretrain", *TINY, "--data", str(first), "--workdir", str(work), "--steps", "2"]) == 0
    capsys.readouterr()
    assert cli(["pretrain", *TINY, "--data", str(other), "--workdir", str(work), "--steps", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on other data" in err[0] and "--allow-data-change" in err[0]
    assert sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]  # nothing written
    # the same data resumes silently; other data with the flag resumes from step 2 with a note
    assert cli(["pretrain", *TINY, "--data", str(other), "--workdir", str(work), "--steps", "4",
                "--allow-data-change"]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "continuing on the new data" in out


def test_a_batch_larger_than_the_epoch_warns(tmp_path):
    from brainjax.config import load_config, override, with_data
    from brainjax.run import data_loaders

    data = tiny_dataset(tmp_path / "small", subjects=2, scans=1)
    settings = ["model.max_parcels=8", "data.batch_size=16", "data.validation=none"]  # two subjects: no val split
    cfg = with_data(override(load_config("tiny"), settings), str(data))
    with pytest.warns(UserWarning, match=r"data.batch_size=16 is larger than the \d+ training windows per epoch"):
        data_loaders(cfg)
