"""Training data without a validation split: refused before the first step, or validated on a time hold-out of
the training scans (no TR shared with a training window), or run without validation, as the user chooses."""

import numpy as np
import pytest
from _trainer_utils import LENGTH, WINDOW, tiny_dataset

from brainjax.config import load_config, override, with_data
from brainjax.data.dataset import Dataset
from brainjax.data.windows import holdout_cut, scan_windows
from brainjax.errors import ConfigError, DatasetError
from brainjax.run import data_loaders


def _cfg(data, *settings):
    return with_data(override(load_config("tiny"), ["model.max_parcels=8", "data.batch_size=2", *settings]),
                     str(data))


@pytest.mark.parametrize("length,window,fraction", [(48, 16, 0.1), (48, 16, 0.5), (100, 10, 0.25),
                                                    (31, 16, 0.1), (32, 16, 0.1), (1000, 200, 0.1)])
def test_holdout_cut_leaves_a_window_on_each_side_or_keeps_the_scan_whole(length, window, fraction):
    cut = int(holdout_cut(np.array([length]), window, fraction)[0])
    if length >= 2 * window:
        tail = length - cut
        assert cut >= window and tail >= window and tail >= int(np.ceil(fraction * length))
        assert tail == max(int(np.ceil(fraction * length)), window)
    else:
        assert cut == length  # too short to split: it trains whole and validates nothing


def test_training_windows_never_touch_the_held_out_tail(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    ds = Dataset(data)
    cut = holdout_cut(np.full(len(ds), LENGTH), WINDOW, 0.3)[0]
    for stride in (0, 4):
        head = scan_windows(ds, 0, "train", WINDOW, stride, holdout=0.3, part="head")
        for epoch in range(5):
            starts = head.epoch_windows(epoch, seed=3)[:, 2]
            assert starts.min() >= 0 and (starts + WINDOW).max() <= cut
    tail = scan_windows(ds, 0, "train", WINDOW, WINDOW, holdout=0.3, part="tail").epoch_windows(0, seed=0)
    assert tail[:, 2].min() >= cut and (tail[:, 2] + WINDOW).max() <= LENGTH
    assert sorted(set(tail[:, 1].tolist())) == ds.indices("train")  # every training scan gives a tail


def test_no_val_split_is_refused_before_training_with_the_choices(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(DatasetError, match=r"no validation data.*split 'val' has no scans.*--validation holdout.*"
                                           r"--validation none"):
        data_loaders(_cfg(data))


def test_holdout_validates_on_the_tails_of_training_scans(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    loader, validation, _ = data_loaders(_cfg(data, "data.validation=holdout", "data.holdout=0.3"))
    cut = holdout_cut(np.array([LENGTH]), WINDOW, 0.3)[0]
    starts = np.concatenate([b["start"][b["valid"]] for b in validation()])
    assert starts.size == len(Dataset(data)) and (starts >= cut).all()
    with loader:
        trained = np.concatenate([next(loader)["start"] for _ in range(20)])
    assert (trained + WINDOW <= cut).all()
    assert loader.get_state()["holdout"] == 0.3  # a resume with another hold-out is told the order changed


def test_validation_none_gives_no_validation_pass(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    _, validation, _ = data_loaders(_cfg(data, "data.validation=none"))
    assert validation is None


def test_holdout_without_room_for_a_tail_names_the_fix(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(DatasetError, match=r"time hold-out.*data.holdout.*--validation none"):
        data_loaders(_cfg(data, "data.validation=holdout", "data.window=28", "model.patch=4"))


def test_bad_validation_settings_are_config_errors(tmp_path):
    data = tiny_dataset(tmp_path / "d", subjects=4)
    for setting in ("data.validation=sometimes", "data.holdout=1.0", "data.holdout=0"):
        with pytest.raises(ConfigError, match=setting.split("=")[0]):
            from brainjax.config import check
            check(_cfg(data, setting))


@pytest.mark.slow
def test_pretrain_without_val_split_as_the_user_chooses(tmp_path, capsys):
    from brainjax.cli import main as cli

    data = tiny_dataset(tmp_path / "d", subjects=4, fractions=(1.0, 0.0, 0.0))
    common = ["pretrain", "--preset", "tiny", "--set", "model.max_parcels=8", "--set", "train.figure=false",
              "--set", "data.batch_size=8", "--data", str(data), "--steps", "2"]
    assert cli([*common, "--workdir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no validation data" in err[0] and "--validation holdout" in err[0]
    assert not (tmp_path / "refused" / "checkpoints").exists()  # refused before anything was trained
    assert cli([*common, "--workdir", str(tmp_path / "holdout"), "--validation", "holdout"]) == 0
    assert "validation: " in capsys.readouterr().out
    assert cli([*common, "--workdir", str(tmp_path / "none"), "--validation", "none"]) == 0
    assert "validation: " not in capsys.readouterr().out
    saved = (tmp_path / "holdout" / "config.json").read_text()
    assert '"validation": "holdout"' in saved  # the choice is part of the run's config
