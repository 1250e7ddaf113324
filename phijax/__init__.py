"""phijax: a JAX research engine for Microsoft's Phi-3 family of models."""

from phijax import errors, gguf
from phijax.config import Phi3Config
from phijax.engine import Generation, Model, load
from phijax.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["Generation", "Model", "Phi3Config", "Tokenizer", "__version__", "errors", "gguf", "load"]
