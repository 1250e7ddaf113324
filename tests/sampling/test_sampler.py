"""Sampler validation: bad values name their field and what is allowed."""

from __future__ import annotations

import pytest

from phijax.errors import ConfigError
from phijax.sampling import Sampler


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repeat_last_n": -2}, "repeat_last_n"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 2.5}, "top_k"),
        ({"order": ("top_p", "banana")}, "order"),
        ({"logit_bias": ((-1, 2.0),)}, "logit_bias"),
        ({"penalize_prompt": "yes"}, "penalize_prompt"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"Sampler\.{field} = .*allowed"):
        Sampler(**kwargs)


def test_from_mapping_refuses_or_drops_unknown_keys():
    fields = {"temperature": 0.5, "top_k": 40, "no_repeat_ngram_size": 3}
    with pytest.raises(ConfigError, match=r"\['no_repeat_ngram_size'\] do not exist; use .*top_k"):
        Sampler.from_mapping(fields)
    assert Sampler.from_mapping(fields, drop_unknown=True) == Sampler(temperature=0.5, top_k=40)
    with pytest.raises(ConfigError, match=r"Sampler\.top_k = "):  # values are still validated
        Sampler.from_mapping({"top_k": -1}, drop_unknown=True)
