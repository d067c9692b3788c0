"""Every command reports bad input the same way: one line ``error: ...`` on stderr and exit status 2.

The errors are handled once, in ``brainjax.cli.main`` (:mod:`brainjax.errors`); each case here fails before
any data is read or model built, so the whole table runs in seconds.
"""

import dataclasses
import errno
import random
from pathlib import Path

import pytest
from _trainer_utils import tiny_dataset

from brainjax.cli import main as cli


def _cases(missing: str) -> list[tuple[list[str], str]]:
    """(argv, a word the message must contain) per command."""
    return [
        (["pretrain", "--set", "model.widht=3"], "widht"),
        (["tokenizer", "train", "--set", "model.widht=3"], "widht"),
        (["plan", "--set", "model.widht=3"], "widht"),
        (["pretrain", "--set", "model.width=wide"], "model.width"),
        (["finetune", "--workdir", missing, "--data", missing, "--task", "classify:sex"], missing),
        (["finetune", "--workdir", missing, "--task", "regress"], "--task"),
        (["evaluate", "--workdir", missing, "--data", missing], missing),
        (["embed", "--workdir", missing, "--data", missing, "--out", f"{missing}/e.npz", "--splits", "test,nope"],
         "--splits"),
        (["tokenizer", "encode", "--workdir", missing, "--out", f"{missing}/c.npz"], missing),
        (["adapt", "--tokenizer", missing, "--data", missing], missing),
        (["instruct", "--adapt", missing, "--data", missing], missing),
        (["ask", "--workdir", missing, "--scan", "s", "--question", "q?"], missing),
        (["info", missing], missing),
        (["describe", "--data", missing], missing),
        (["plan", "--platform", "abacus"], "--platform"),
        (["export", "--workdir", missing, "--out", f"{missing}/model"], missing),
        (["convert-brainlm", "--src", missing, "--out", f"{missing}/o"], missing),
    ]


@pytest.mark.parametrize("index", range(len(_cases(""))))
def test_bad_input_prints_one_error_line_and_exits_2(index, tmp_path, capsys):
    missing = str(tmp_path / "nothing-here")
    argv, word = _cases(missing)[index]
    assert cli(argv) == 2, argv
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and word in err[0], (argv, err)


def test_the_table_covers_every_command_that_reads_input(tmp_path):
    from brainjax.cli import COMMANDS

    covered = {argv[0] for argv, _ in _cases(str(tmp_path))}
    assert set(COMMANDS) - covered <= {"synth", "prepare"}  # tested in test_synthetic / test_prepare


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINJAX_TRACEBACK", "1")
    with pytest.raises(ValueError, match="dataset directory not found"):  # a DatasetError
        cli(["evaluate", "--workdir", str(tmp_path / "none"), "--data", str(tmp_path / "none")])


@pytest.mark.parametrize("overrides, word", [(["--steps", "0"], "train.steps=0"),
                                             (["--set", "model.width=-4"], "model.width=-4"),
                                             (["--set", "model.heads=3"], "not a multiple of model.heads=3"),
                                             (["--set", "mask.ratio=1.5"], "mask.ratio=1.5")])
def test_nonsense_numbers_are_refused_before_training(overrides, word, tmp_path, capsys):
    assert cli(["pretrain", "--preset", "tiny", "--data", str(tmp_path / "none"), "--workdir", str(tmp_path / "w"),
                *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and not (tmp_path / "w").exists()


def test_a_work_dir_of_another_objective_is_refused(tmp_path, capsys):
    tokenizer = Path(__file__).resolve().parent / "fixtures" / "v1_runs" / "tokenizer"
    data = str(tiny_dataset(tmp_path / "data"))
    for argv in (["evaluate", "--workdir", str(tokenizer), "--data", data],
                 ["embed", "--workdir", str(tokenizer), "--data", data, "--out", str(tmp_path / "e.npz")],
                 ["finetune", "--workdir", str(tokenizer), "--data", data, "--task", "forecast"]):
        code = cli(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "'tokenizer' run, not a mae run" in err[0], (argv, err)


def test_a_full_disk_names_the_file_and_a_bug_asks_for_a_report(tmp_path, monkeypatch, capsys):
    import brainjax.run

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "checkpoints" / "4"))
    monkeypatch.setattr(brainjax.run, "launch", lambda *a, **k: (_ for _ in ()).throw(full))
    assert cli(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    where = tmp_path / "w" / "checkpoints" / "4"
    assert capsys.readouterr().err.strip() == f"error: No space left on device: '{where}'"
    monkeypatch.setattr(brainjax.run, "launch", lambda *a, **k: {}["a bug"])
    assert cli(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "please report it" in err


def _fuzz_values(rng: random.Random) -> str:
    return rng.choice(["", "-1", "0", "-4", "1e309", "nan", "inf", "-inf", "3.5", "abc", "true", "none", "()",
                       "1,2", "[]", "1" * 30, "🧠", "=", "0x10", str(rng.randint(-10 ** 6, 10 ** 6))])


def test_fuzzed_overrides_never_end_in_a_traceback(capsys):
    """Random values for every config field: ``plan`` (load, override, check, size) answers 0, 1 or 2 and at
    most one ``error:`` line, never a traceback."""
    from brainjax.config import Config

    keys = [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            if dataclasses.is_dataclass(section.default_factory) if section.name != "language"
            for f in dataclasses.fields(section.default_factory)]
    rng = random.Random(0)
    for key in rng.sample(keys, 40):
        value = _fuzz_values(rng)
        code = cli(["plan", "--preset", "tiny", "--devices", "1", "--platform", "cpu", "--set", f"{key}={value}"])
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err, (key, value, err)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("W")]
        assert code != 2 or (len(lines) == 1 and lines[0].startswith("error: ")), (key, value, err)
