"""Every command reports bad input the same way: one line ``error: ...`` on stderr and exit status 2.

The errors are handled once, in ``brainjax.cli.main`` (:mod:`brainjax.errors`); each case here fails before
any data is read or model built, so the whole table runs in seconds.
"""

import pytest

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
    ]


@pytest.mark.parametrize("index", range(15))
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
