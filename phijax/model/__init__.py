"""The Phi-3 model: the weights (a Flax NNX pytree) and the pure math that runs them."""

from phijax.model import hooks
from phijax.model.forward import decoder, embed, forward
from phijax.model.phi3 import Phi3

__all__ = ["Phi3", "decoder", "embed", "forward", "hooks"]
