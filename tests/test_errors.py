"""Error-message helpers: values shown in a message stay readable."""

from __future__ import annotations

import numpy as np

from phijax.errors import short_repr


def test_short_repr_shows_numpy_values_as_python_values():
    assert short_repr(np.int32(7)) == "7"
    assert short_repr(np.array([1.5, 2.0])) == "[1.5, 2.0]"
    assert short_repr("thirty") == "'thirty'"


def test_short_repr_cuts_long_arrays_and_long_text():
    assert short_repr(list(range(20))) == "[0, 1, 2, 3, 4, 5, 6, 7, '...']"
    assert short_repr(np.arange(20)) == "[0, 1, 2, 3, 4, 5, 6, 7, '...']"
    text = short_repr("x" * 200)
    assert len(text) == 80 and text.endswith("...") and text.startswith("'xxx")
