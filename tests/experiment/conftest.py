"""Fixtures of the experiment tests."""

from __future__ import annotations

import pytest

import phijax

from rows import TINY_MODEL


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny sliding-window phi3 fixture, loaded once per module."""
    return phijax.load(TINY_MODEL, progress=False)
