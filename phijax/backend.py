"""Every choice that depends on the device, made once: :class:`Backend`.

XLA:CPU and the accelerators want different things (``docs/benchmarks.md`` has the
measurements): on CPU a bf16 matrix-*vector* product is 10x slower than f32's, a bf16 KV
cache is converted whole in every layer, a slice of a stacked weight misses the fast
matrix-vector kernel, and packed weights are fastest through phijax's own kernel; on GPU
and TPU bf16, a stacked ``scan`` and XLA's products are right. :func:`choose` turns the
platform, the requested dtype and weight mode, the mesh and the kernel's status into one
frozen, hashable :class:`Backend`, which :func:`phijax.load` stores on the parameters
(``params.backend``, static: it is part of every compiled step's cache key) and which the
model's functions read instead of asking JAX. :func:`platform` is the only reader of
``jax.default_backend()`` in phijax; tests force either policy on any machine by passing
``platform=``.
"""

from __future__ import annotations

import dataclasses
import mmap
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from gguf import GGMLQuantizationType as QT

from phijax import kernels
from phijax.errors import ConfigError
from phijax.quant import F32_INTERLEAVED, QuantArray

LAYOUTS = ("layers", "stacked")

STACKED_BELOW_PARAMETERS = 1_000_000_000
"""On CPU with the kernel, models with fewer parameters default to the ``stacked`` layout.

The unrolled layer loop's compiled programs hold 0.2-0.3 GB in memory whatever the model's
size (XLA keeps ~11 KB per HLO instruction; SmolLM2's decode program alone has 18,000), and
take 2x to compile cold. The kernel reads a stack's layer in place, so a scan costs a small
model no decode speed (SmolLM2, 135M: batch 1 within 1%, whole-run peak 0.27 instead of
0.49 GB), while Phi-3-mini (3.8B) decodes 3.5% faster unrolled, for which its 2.3 GB of
weights dwarf the programs. ``docs/benchmarks.md`` has the runs."""
PLATFORMS = ("cpu", "gpu", "tpu")


def platform() -> str:
    """The platform JAX computes on by default: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


@dataclass(frozen=True)
class Backend:
    """The per-device choices of one loaded model (hashable: a jit static argument).

    ``platform``: ``cpu``, ``gpu`` or ``tpu``. ``dtype``: the compute dtype's name
    (weights that are not packed are stored in it). ``packed``: quantized matrices stay
    :class:`~phijax.quant.QuantArray` blocks, decoded inside each product. ``layout``:
    ``layers`` (one array per layer, an unrolled loop) or ``stacked`` (``[layers, ...]``
    under a scan). ``kernel``: the CPU kernel build that multiplies packed and bf16
    weights at few rows, or ``None`` (XLA's products). ``mesh``: whether the weights are
    split over a device mesh. ``why``: the reasons for the defaults taken, for the load
    summary (not part of the policy's identity).
    """

    platform: str
    dtype: str
    packed: bool
    layout: str
    kernel: str | None
    mesh: bool = False
    activations: str = "f32"
    why: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def kv_dtype(self) -> jnp.dtype:
        """The KV cache's and attention's dtype: the compute dtype, but f32 on CPU.

        XLA:CPU updates a bf16 cache by converting the whole stacked buffer to f32 and back
        in every layer (60 whole-cache converts per SmolLM2 step; bf16 decode 3x slower
        than f32 on Phi-3-mini at batch 32), and its small batched bf16 products are slow
        or, for some shapes, unsupported (``DotThunk``: BF16 x BF16 = F32).
        """
        return jnp.dtype(jnp.float32) if self.platform == "cpu" else self.compute_dtype

    @property
    def weight_first(self) -> bool:
        """Whether a bf16 product is written ``w @ x.T`` (XLA:CPU: ``x @ w.T`` makes it
        hoist a transposed copy of every weight out of the decode loop)."""
        return self.platform == "cpu"

    @property
    def gather_words(self) -> bool:
        """Whether a 16-bit embedding table is gathered as raw 16-bit words (XLA:CPU
        gathers a bf16 table through an f32 copy of the whole table)."""
        return self.platform == "cpu"

    @property
    def pads_decode(self) -> bool:
        """Whether small decode batches are padded to the row count measured fastest
        (:mod:`phijax.decode_padding`): a bf16 model on CPU, whose matrix-vector products are slow."""
        return self.platform == "cpu" and self.compute_dtype != jnp.float32

    @property
    def keeps_prepared_weights(self) -> bool:
        """Whether a load keeps its re-laid-out weights on disk for the next one to read
        (:mod:`phijax.prepared`): packed weights on one CPU device, where the re-layout is
        most of a load and XLA:CPU uses a read buffer in place."""
        return self.platform == "cpu" and self.packed and not self.mesh

    @property
    def maps_prepared_weights(self) -> bool:
        """Whether a load maps its prepared weights' file (the page cache's own pages,
        copy-on-write: :func:`phijax.prepared.map_file`) instead of reading it into fresh
        memory, unless ``map_prepared`` says otherwise. Fresh memory's page faults were most
        of a read load, and decode ran as fast over the mapping: Phi-3-mini loaded in 0.2-0.35 s
        instead of 0.8-1.2 s on an Intel Xeon VM and 0.3 s instead of 1.2 s on an AMD EPYC
        VM (``docs/benchmarks.md``), as llama.cpp maps its file. Not where Python's ``mmap``
        has no private mappings (Windows)."""
        return self.keeps_prepared_weights and hasattr(mmap, "MAP_PRIVATE")

    @property
    def reads_stacks_in_place(self) -> bool:
        """Whether a layer's step gets the stacked matrices whole with the layer's index, for
        the CPU kernel to read in place (XLA:CPU copies a slice of a stack: every layer's
        weights once per step)."""
        return self.kernel is not None and self.layout == "stacked"

    @property
    def reads_cache_in_place(self) -> bool:
        """Whether decode attention (one query position per row) runs on the CPU kernel,
        reading each layer's keys and values where the stacked cache holds them, and only
        the filled slots (:mod:`phijax.kernels.attention`): XLA:CPU copies every layer's
        attended slice out of the cache first."""
        return self.kernel is not None

    def attends_in_place(self, head_dim: int, dtype: Any) -> bool:
        """Whether a decode step's attention over a cache of ``dtype``, heads of ``head_dim``,
        runs on the CPU kernel: :attr:`reads_cache_in_place`, for a head size and cache type
        the kernel takes (:func:`phijax.kernels.attention.fits`)."""
        return self.reads_cache_in_place and kernels.attention.fits(head_dim, dtype)

    @property
    def interleaves(self) -> str | None:
        """The activations for whose products the load stores packed matrices in the CPU
        kernel's interleaved order (:func:`phijax.quant.interleaved`), or ``None`` (row order):
        int8 activations take every k-quant so; f32 ones Q4_K's and Q5_K's
        (:attr:`f32_interleaved`) on the AVX-512 and AVX2 builds, where
        their products measured faster (``f32_interleaved.h``: 15-25% on an Intel Xeon; at one
        row 7-28% on an AMD Zen 3, whose batch-1 decode gained about 13%). The portable build
        keeps row order (its loops are the compiler's, unmeasured on that order)."""
        if self.kernel is None:
            return None
        if self.activations == "int8":
            return "int8"
        return None if self.kernel == "generic" else "f32"

    @property
    def f32_interleaved(self) -> frozenset[QT]:
        """The types whose matrices the load interleaves for f32 activations (where
        :attr:`interleaves` is ``"f32"``): Q4_K and Q5_K, and on the AVX2 build Q6_K too, its
        codes as 6 bits (0.77 instead of 1.07 bytes per weight with the scales). There its
        one-row products from memory measured level with the int8 codes' in row order (AMD
        Zen 3: 2.13 against 2.16 ms per ``[3072, 8192]``), more arithmetic for fewer bytes;
        AVX-512's tests and masked adds per plane are unmeasured, so it keeps row order."""
        if self.interleaves != "f32":
            return frozenset()
        six_bit = {QT.Q6_K} if self.kernel == "avx2" else set()
        return F32_INTERLEAVED | six_bit

    def activations_for(self, w: jax.Array | QuantArray) -> str:
        """How ``linear`` treats its input for ``w``: int8 activations apply to packed weights."""
        return self.activations if isinstance(w, QuantArray) else "f32"

    def kernel_rows(self, w: jax.Array | QuantArray) -> int | None:
        """Rows of ``x`` up to which ``w`` is multiplied on the kernel (``None``: never)."""
        return None if self.kernel is None else kernels.row_limit(w)

    def uses_kernel(self, x: jax.Array, w: jax.Array | QuantArray) -> bool:
        """Whether ``linear(x, w)`` runs on the kernel: a build is chosen, it takes ``w``,
        and ``x`` has at most :meth:`kernel_rows` rows (outside any traced mesh)."""
        return self.kernel is not None and kernels.applies(x, w, self.activations_for(w))

    def describe(self) -> str:
        """One line for the load summary: dtype, weights, layout, products, attention, and why."""
        weights = "packed weights" if self.packed else "dense weights"
        kernel_work = self.packed or self.dtype == "bfloat16"  # what the kernel multiplies
        if self.kernel is not None and kernel_work:
            products = f"CPU kernel {self.kernel}"
        elif self.platform == "cpu" and kernel_work:
            products = "XLA's products (" + ("on the mesh" if self.mesh else kernels.status()) + ")"
        else:
            products = "XLA's products"
        if self.activations == "int8":
            how = kernels.INT8_PRODUCTS.get(self.kernel, "portable loops") if self.kernel else ""
            weights += (
                f" with int8 activations (llama.cpp's rounding{how and '; products by ' + how})"
            )
        line = f"{self.dtype}, {weights}, {self.layout} layout, {products}"
        line += ", decode attention on the CPU kernel" if self.reads_cache_in_place else ""
        return line + (f" ({'; '.join(self.why)})" if self.why else "")


def choose(
    *,
    platform_name: str | None = None,
    dtype: Any = None,
    quantized: bool | None = None,
    layout: str | None = None,
    mesh: bool = False,
    fits_dense: bool = True,
    has_quantized: bool = True,
    activations: str | None = None,
    parameters: int | None = None,
) -> Backend:
    """The policy for a model: explicit arguments win; ``None`` takes the platform's default.

    Defaults (measured, ``docs/benchmarks.md``): f32 on CPU, bf16 elsewhere; on CPU
    packed weights when the kernel runs here (fastest at batch 1 and smallest: Phi-3-mini
    decodes 2.6x f32's speed in a quarter of the memory), else dense, unless dense weights
    do not fit (``fits_dense=False``); dense elsewhere. ``layers`` layout on CPU, ``stacked``
    elsewhere: XLA:CPU cannot feed a slice of a stacked weight to its matrix-vector
    kernel (inside a scan it copies or loops naively: batch-1 decode on Phi-3-mini shapes
    streams 6.7 GB/s instead of 31), while separate per-layer arrays reach the bound; the
    price is a layer loop unrolled at trace time, which the persistent compilation cache
    pays once. Except where the kernel multiplies the matrices (packed or bf16) of a model of
    fewer than :data:`STACKED_BELOW_PARAMETERS` ``parameters``: the kernel reads a stack's
    layer in place, and the unrolled programs would outweigh the weights.
    The kernel only on CPU and outside a mesh. ``has_quantized=False`` (a file whose matrices are all floats)
    leaves nothing to pack: the weights are dense.
    """
    name = platform_name or platform()
    if name not in PLATFORMS:
        raise ConfigError(f"platform = {name!r}; use one of {PLATFORMS}.")
    cpu = name == "cpu"
    why = []
    try:
        compute = jnp.dtype(dtype or (jnp.float32 if cpu else jnp.bfloat16))
    except TypeError as e:
        raise ConfigError(f"dtype = {dtype!r} is not a dtype: use 'float32' or 'bfloat16'.") from e
    if compute not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ConfigError(f"dtype = {compute.name}; use float32, bfloat16 or float16.")
    if layout not in (None, *LAYOUTS):
        raise ConfigError(
            f"layout = {layout!r}; use one of {LAYOUTS} (or None for the device's default)."
        )
    kernel = kernels.chosen() if cpu and not mesh else None
    if not has_quantized:
        quantized = False
    elif quantized is None and activations == "int8":
        quantized = True
        why.append("packed: int8 activations round the inputs of packed products")
    elif quantized is None:
        if not cpu or dtype is not None:
            quantized = False
        elif kernel is not None:
            quantized = True
            why.append("packed: the CPU kernel runs here, fastest at batch 1 and 4x smaller")
        else:
            quantized = not fits_dense
            if quantized:
                why.append("packed: dense f32 weights do not fit in free memory")
    activations = activations or "f32"
    if activations not in kernels.ACTIVATIONS:
        raise ConfigError(f"activations = {activations!r}; use one of {kernels.ACTIVATIONS}.")
    if activations == "int8" and not (quantized and has_quantized):
        raise ConfigError(
            "activations = 'int8' rounds the inputs of packed products: it needs packed weights "
            "(quantized=True, the CPU default where phijax's kernel runs) and a file with "
            "quantized matrices."
        )
    if layout is None and cpu:
        small = parameters is not None and parameters < STACKED_BELOW_PARAMETERS
        kernel_work = quantized or compute == jnp.bfloat16
        if kernel is not None and kernel_work and small:
            layout = "stacked"
            why.append("stacked: a small model, whose layers the kernel reads in place")
        else:
            layout = "layers"
    return Backend(
        platform=name,
        dtype=compute.name,
        packed=bool(quantized),
        layout=layout or "stacked",
        kernel=kernel,
        mesh=mesh,
        activations=activations,
        why=tuple(why),
    )
