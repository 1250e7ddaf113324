"""GGUF files: a validating reader and JAX dequantization kernels."""

from phijax.gguf.reader import GGUFFile, TensorInfo

__all__ = ["GGUFFile", "TensorInfo"]
