"""The :class:`Sampler`: a frozen, validated description of how to pick the next token, and
the stage orders it can name."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from phijax.errors import ConfigError

STAGES = (
    "penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc",
    "epsilon", "eta", "temperature",
)  # fmt: skip
# llama.cpp's default chain (common_params_sampling.samplers), with HF's epsilon
# and eta cutoffs (absent from llama.cpp) placed after min_p.
LLAMACPP_ORDER = STAGES
# Candle's order (apply_repeat_penalty, then LogitsProcessor): repeat penalty, temperature, top-p.
CANDLE_ORDER = ("penalties", "temperature", "top_p")


@dataclass(frozen=True)
class Sampler:
    """How to pick the next token; frozen and validated. Defaults sample the plain softmax.

    Every field is a value per row: a batch may mix samplers freely, except
    ``order`` (the stage order, static under jit), which must be shared.
    Disabled values: ``top_k=0``, ``top_p=1``, ``min_p=0``, ``typical_p=1``,
    ``epsilon_cutoff=0``, ``eta_cutoff=0``, ``top_n_sigma=0``,
    ``xtc_probability=0``, ``mirostat_tau=0``, ``repetition_penalty=1``,
    ``presence_penalty=0``, ``frequency_penalty=0``, ``dry_multiplier=0``.
    ``repeat_last_n=-1`` means the whole sequence; ``dry_last_n`` likewise.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_n_sigma: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    mirostat_tau: float = 0.0
    mirostat_eta: float = 0.1
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    penalize_prompt: bool = False
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    logit_bias: tuple[tuple[int, float], ...] = ()
    order: tuple[str, ...] = LLAMACPP_ORDER

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"Sampler.{name} = {getattr(self, name)!r}; allowed: {allowed}.")

        def number(name: str) -> float:
            value = getattr(self, name)
            check(
                name,
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value),
                "a finite number",
            )
            return float(value)

        def integer(name: str) -> int:
            value = getattr(self, name)
            check(
                name,
                isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                "an integer",
            )
            return int(value)

        check("temperature", number("temperature") >= 0, ">= 0 (0 is greedy)")
        check("top_k", integer("top_k") >= 0, ">= 0 (0 is off)")
        check("top_p", 0 < number("top_p") <= 1, "0 < top_p <= 1 (1 is off)")
        check("min_p", 0 <= number("min_p") <= 1, "0 <= min_p <= 1 (0 is off)")
        check("typical_p", 0 < number("typical_p") <= 1, "0 < typical_p <= 1 (1 is off)")
        check(
            "epsilon_cutoff",
            0 <= number("epsilon_cutoff") < 1,
            "0 <= epsilon_cutoff < 1 (0 is off)",
        )
        check("eta_cutoff", 0 <= number("eta_cutoff") < 1, "0 <= eta_cutoff < 1 (0 is off)")
        check("top_n_sigma", number("top_n_sigma") >= 0, ">= 0 (0 is off)")
        check(
            "xtc_probability",
            0 <= number("xtc_probability") <= 1,
            "0 <= xtc_probability <= 1 (0 is off)",
        )
        check(
            "xtc_threshold",
            0 <= number("xtc_threshold") <= 1,
            "0 <= xtc_threshold <= 1 (> 0.5 is off)",
        )
        check("mirostat_tau", number("mirostat_tau") >= 0, ">= 0 (0 is off)")
        check("mirostat_eta", 0 < number("mirostat_eta") <= 1, "0 < mirostat_eta <= 1")
        check("repetition_penalty", number("repetition_penalty") > 0, "> 0 (1 is off)")
        number("presence_penalty")
        number("frequency_penalty")
        check(
            "repeat_last_n",
            integer("repeat_last_n") >= -1,
            ">= -1 (-1 is the whole sequence, 0 is off)",
        )
        check("penalize_prompt", isinstance(self.penalize_prompt, bool), "True or False")
        check("dry_multiplier", number("dry_multiplier") >= 0, ">= 0 (0 is off)")
        check("dry_base", number("dry_base") >= 1, ">= 1")
        check("dry_allowed_length", integer("dry_allowed_length") >= 1, ">= 1")
        check("dry_last_n", integer("dry_last_n") >= -1, ">= -1 (-1 is the whole sequence)")
        breakers = self.dry_sequence_breakers
        check(
            "dry_sequence_breakers",
            isinstance(breakers, tuple) and all(isinstance(b, str) and b for b in breakers),
            "a tuple of non-empty strings",
        )
        bias = self.logit_bias
        check(
            "logit_bias",
            isinstance(bias, tuple) and all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], (int, np.integer)) and p[0] >= 0
                and isinstance(p[1], (int, float)) and not math.isnan(p[1]) for p in bias
            ),
            "a tuple of (token_id, bias) pairs, bias a number or -inf",
        )  # fmt: skip
        unknown = [s for s in self.order if s not in STAGES]
        check("order", isinstance(self.order, tuple) and not unknown and len(set(self.order)) == len(self.order),
              f"a tuple of distinct stages from {STAGES}")  # fmt: skip

    @classmethod
    def greedy(cls) -> Sampler:
        """Always the most likely token (temperature 0)."""
        return cls(temperature=0.0)

    @classmethod
    def candle(
        cls,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repeat_penalty: float = 1.2,
        repeat_last_n: int = 64,
    ) -> Sampler:
        """Candle's sampler, with the Candle haiku program's settings (docs/sampling.md): repeat
        penalty over the last ``repeat_last_n`` generated tokens, temperature, then nucleus."""
        return cls(temperature=temperature, top_p=top_p, repetition_penalty=repeat_penalty,
                   repeat_last_n=repeat_last_n, order=CANDLE_ORDER)  # fmt: skip

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any], *, drop_unknown: bool = False) -> Sampler:
        """A Sampler from field names and values (a stored row, mapped lm_eval gen_kwargs).

        Keys that are not fields raise a ConfigError naming them, or with ``drop_unknown``
        are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown and not drop_unknown:
            raise ConfigError(
                f"Sampler fields {unknown} do not exist; use {', '.join(sorted(names))}."
            )
        return cls(**{k: v for k, v in fields.items() if k in names})

    def replace(self, **changes: Any) -> Sampler:
        return dataclasses.replace(self, **changes)
