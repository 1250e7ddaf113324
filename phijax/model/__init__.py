"""The Phi-3 model: pure math (rope, attention) and the Flax module that holds the weights."""

from phijax.model.phi3 import Phi3

__all__ = ["Phi3"]
