"""phijax: a JAX research engine for Microsoft's Phi-3 family of models."""

from phijax import errors, gguf, model, steps
from phijax.batching import Padded, pad
from phijax.config import Phi3Config
from phijax.engine import Model
from phijax.generation import Generation
from phijax.loading import load
from phijax.model.forward import forward, unembed
from phijax.sampling import Sampler
from phijax.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "Model",
    "Padded",
    "Phi3Config",
    "Sampler",
    "Tokenizer",
    "__version__",
    "errors",
    "forward",
    "gguf",
    "load",
    "model",
    "pad",
    "steps",
    "unembed",
]
