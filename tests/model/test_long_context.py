"""A 4k phi3 file without a window key, past 2047 tokens: the window the model was trained with.

Microsoft's Phi-3-mini-4k-instruct-q4.gguf (docs/formats.md) has no
``phi3.attention.sliding_window`` key, yet HF's config for the model says 2047.
The fixture is a tiny phi3 with the same header facts (context 4096, no window
key) and HF ``Phi3ForCausalLM`` logits on a 2600-token prompt, run with
``sliding_window=2047`` and with none (``tests/fixtures/make_model_fixtures.py
long_context``). The prompt repeats one token 1000 times first, so dropping the
oldest keys changes the logits measurably past position 2047.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import phijax
from phijax.config import resolve_sliding_window
from phijax.gguf import GGUFFile

from numerics import assert_logits_close

FIXTURE = Path(__file__).parents[1] / "fixtures" / "long_context" / "phi3_4k_no_window"


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE.with_suffix(".npz"))


def test_fixture_is_a_4k_phi3_file_without_a_window_key(reference):
    f = GGUFFile(FIXTURE.with_suffix(".gguf"))
    assert f.architecture == "phi3" and f.metadata["phi3.context_length"] == 4096
    assert "phi3.attention.sliding_window" not in f.metadata
    assert len(reference["ids"]) > int(reference["window"]) == 2047
    config = phijax.Phi3Config.from_gguf(f)
    assert resolve_sliding_window(config, "auto")[0] == 2047
    # The references differ past the window, so the comparison below can tell them apart;
    # before it HF ran the same computation for both, to the bit.
    past = reference["positions"] >= 2047
    gap = np.abs(reference["windowed"] - reference["full"]).max(-1)
    assert np.all(gap[~past] == 0) and np.all(gap[past] > 5e-5) and gap.max() > 2e-2


def _check(model, reference, expected: str, other: str) -> None:
    ids = reference["ids"].tolist()
    positions = reference["positions"]
    logits = model.logits(ids)[positions]
    err = np.abs(logits - reference[expected]).max(-1)
    gap = np.abs(reference["windowed"] - reference["full"]).max(-1)
    # f32 rounding only (tests/numerics.py), at every position (0, 1000 and 2046 included):
    # attention's sum over 2047 (windowed) or 2600 positions is the longest reduction here,
    # atol 4.0e-5 or 4.6e-5 (measured: at most 4.8e-7)
    keys = min(len(ids), model.sliding_window or len(ids))
    assert_logits_close(logits, reference[expected], model.config, keys=keys)
    past = positions >= 2047
    # Past the window, ours is far closer to the expected reference than to the other one.
    assert np.all(err[past] < gap[past] / 10), (err, gap)
    assert np.abs(logits[past] - reference[other][past]).max() > 10 * err[past].max()


# These go through phijax.load(..., sliding_window=...), which must resolve the window
# with phijax.config.resolve_sliding_window.
@pytest.mark.parametrize("mode", ["auto", "on"])
def test_auto_and_on_follow_the_2047_window(reference, mode):
    model = phijax.load(FIXTURE.with_suffix(".gguf"), progress=False, sliding_window=mode)
    assert model.sliding_window == 2047
    _check(model, reference, "windowed", "full")


def test_off_attends_to_the_whole_context(reference):
    model = phijax.load(FIXTURE.with_suffix(".gguf"), progress=False, sliding_window="off")
    assert model.sliding_window is None
    _check(model, reference, "full", "windowed")
