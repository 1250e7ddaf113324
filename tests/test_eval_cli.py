"""``phijax eval`` without the optional extra, and the flags only it passes on."""

from __future__ import annotations

import importlib.util

import pytest

from phijax.cli import main


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is not None,
    reason="lm_eval is installed: tests/test_lm_eval.py runs phijax eval itself",
)
def test_eval_without_the_extra_names_it(capsys):
    assert main(["eval", "--model", "pypi:smollm2", "--tasks", "phijax_local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phijax: error:") and "pip install 'phijax[eval]'" in err


def test_other_commands_still_refuse_unknown_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "pypi:smollm2", "--tasks", "x"])
    assert exit_.value.code == 2 and "unrecognized arguments: --tasks x" in capsys.readouterr().err
