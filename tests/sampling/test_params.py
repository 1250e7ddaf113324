"""Stacking samplers into per-row parameters refuses what one batch cannot run."""

from __future__ import annotations

import pytest

from phijax import sampling
from phijax.errors import ConfigError
from phijax.sampling import Sampler

V = 300


def test_mixed_orders_in_one_batch_are_refused():
    with pytest.raises(ConfigError, match="share their stage order"):
        sampling.stack([Sampler(), Sampler.candle()], V)


def test_logit_bias_outside_the_vocabulary():
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        sampling.stack([Sampler(logit_bias=((V, 1.0),))], V)
