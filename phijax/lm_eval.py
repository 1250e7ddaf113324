"""lm-evaluation-harness adapter: :class:`PhijaxLM`, registered as lm_eval model ``"phijax"``.

Needs the optional extra: ``pip install 'phijax[eval]'`` (``lm-eval>=0.4.13``). Importing
this module registers the model, so ``phijax eval --model SRC --tasks ...`` (which imports
it first) or, in Python, ``lm_eval.simple_evaluate(model=PhijaxLM(pretrained=SRC), ...)``.

Requests follow lm_eval's ``hf`` model: context/continuation pairs are split by
``TemplateLM._encode_pair`` over :func:`phijax.scoring.encode` (HF's BOS rule) and scored by
:meth:`phijax.Model.loglikelihood` (left-truncated to ``max_length``, log-softmax on the
device); ``loglikelihood_rolling`` uses lm_eval's disjoint rolling windows;
``generate_until`` truncates prompts to ``max_length - max_gen_toks`` from the left, stops
at the ``until`` strings and returns the text before the first of them. docs/evaluation.md.

:func:`run_cli` is ``phijax eval``: lm_eval's own CLI, except that when every ``--tasks``
name is defined under ``--include_path`` lm_eval's task index leaves out its ~26k built-in
task YAMLs (:func:`local_tasks`, :func:`index_without_builtins`).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:
    import lm_eval.tasks
    from lm_eval import utils as lm_utils
    from lm_eval.__main__ import cli_evaluate
    from lm_eval._cli import HarnessCLI
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.tasks import TaskManager
except ImportError as e:  # the optional extra is missing
    from phijax.errors import UnsupportedError

    raise UnsupportedError(
        f"phijax.lm_eval needs lm-evaluation-harness ({e}); install it with "
        "pip install 'phijax[eval]' (lm-eval>=0.4.13)."
    ) from None

import phijax
from phijax import scoring
from phijax.errors import ConfigError, TokenizerError
from phijax.sampling import Sampler

GENERATE_BATCH = 8  # rows per generate() call when batch_size is "auto"
# gen_kwargs lm_eval passes through that map one to one onto phijax.Sampler fields
SAMPLER_KEYS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "presence_penalty",
    "frequency_penalty",
)
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker, same rule
_LOCAL_KINDS = ("TASK", "PY_TASK", "GROUP")  # lm_eval task index kinds local_tasks accepts


def sampler_for(gen_kwargs: dict[str, Any]) -> Sampler:
    """The :class:`~phijax.Sampler` for normalized lm_eval ``gen_kwargs`` (``until`` and
    ``max_gen_toks`` removed): greedy unless ``do_sample``; then the keys in
    :data:`SAMPLER_KEYS` as given, and ``repetition_penalty`` as HF applies it (over the
    prompt and every generated token). Nothing is implied: HF's generation config adds
    ``top_k=50`` when a task does not set it, phijax does not. Other keys: ConfigError."""
    kwargs = dict(gen_kwargs)
    do_sample = bool(kwargs.pop("do_sample", False))
    if kwargs.pop("num_beams", 1) != 1:
        raise ConfigError("gen_kwargs num_beams: phijax has no beam search; use num_beams=1.")
    unknown = sorted(set(kwargs) - {*SAMPLER_KEYS, "repetition_penalty"})
    if unknown:
        raise ConfigError(
            f"gen_kwargs {unknown}: not a phijax sampler setting; use "
            f"{', '.join((*SAMPLER_KEYS, 'repetition_penalty'))} (docs/evaluation.md)."
        )
    if not do_sample:
        return Sampler.greedy()
    fields: dict[str, Any] = {k: kwargs[k] for k in SAMPLER_KEYS if k in kwargs}
    if "repetition_penalty" in kwargs:
        fields.update(
            repetition_penalty=kwargs["repetition_penalty"], repeat_last_n=-1, penalize_prompt=True
        )
    return Sampler.from_mapping(fields)  # unknown keys were refused above, by their gen_kwargs name


def render_chat(
    tokenizer: phijax.Tokenizer,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """``messages`` through the model's chat template. Without ``add_generation_prompt``
    the last message is continued, as transformers' ``continue_final_message`` does: the
    text ends where that message's content ends (``...The answer is``), not after its
    end-of-turn marker."""
    if add_generation_prompt:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if not messages:
        raise TokenizerError("apply_chat_template: no messages to continue.")
    marked = [dict(m) for m in messages]
    final = marked[-1]["content"]
    marked[-1]["content"] = final + _CONTINUE_TAG
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=False)
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise TokenizerError(
            "apply_chat_template: the chat template drops part of the final message, so it "
            f"cannot be continued; final message {final.strip()!r}, rendered {text!r}."
        )
    at = text.rindex(tag)
    return text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()


@register_model("phijax")
class PhijaxLM(TemplateLM):
    """A phijax model behind lm_eval's ``LM`` interface.

    ``pretrained``: any phijax source (path, ``org/repo/file.gguf``, ``pypi:NAME``) or a
    loaded :class:`phijax.Model`; ``dtype``, ``quantized``: as :func:`phijax.load`;
    ``max_length``: tokens of context (default: the model's); ``batch_size``: rows per call
    (an int, or ``"auto"``: as many as ``phijax.batching.BATCH_BYTES`` holds, and
    ``GENERATE_BATCH`` prompts per generate call); ``seed``: the PRNG seed of sampled
    generations. ``device`` and ``max_batch_size`` (which lm_eval always passes) are
    ignored: JAX places the work on its default device.
    """

    def __init__(
        self,
        pretrained: str | phijax.Model = "pypi:smollm2",
        dtype: str | None = None,
        quantized: bool = False,
        max_length: int | None = None,
        batch_size: int | str | None = 1,
        seed: int = 0,
        device: str | None = None,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"phijax model_args {sorted(unknown)} are not known; use pretrained, dtype, "
                "quantized, max_length, batch_size, seed."
            )
        if isinstance(pretrained, phijax.Model):
            if dtype is not None or quantized:
                raise ConfigError(
                    "PhijaxLM(pretrained=<Model>): dtype and quantized apply when loading; "
                    "load the model with them (phijax.load) or pass its source instead."
                )
            self.model = pretrained
        else:
            self.model = phijax.load(str(pretrained), dtype=dtype, quantized=bool(quantized))
        self._max_length = scoring.resolve_max_length(
            None if max_length is None else int(max_length), self.model.sequence_limit
        )
        self._batch_size = _batch_size(batch_size)
        self.seed = int(seed)
        self.source = str(self.model.path)

    # -- what lm_eval reads -------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.model.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return scoring.prefix_id(self.model.tokenizer)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return 256

    @property
    def batch_size(self) -> int | None:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.source.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.model.tokenizer.chat_template if chat_template else None

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_source": self.source,
            "model_dtype": str(self.model.dtype),
            "phijax_version": phijax.__version__,
        }

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        ids = scoring.encode(self.model.tokenizer, string, add_special=add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.model.tokenizer.decode(tokens, skip_special=skip_special_tokens)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat as the model's template renders it (HF's ``continue_final_message``
        when not adding a generation prompt); a template that rejects a system message is
        retried without it, as lm_eval's ``hf`` model does."""
        try:
            return render_chat(
                self.model.tokenizer, chat_history, add_generation_prompt=add_generation_prompt
            )
        except TokenizerError:
            without = [m for m in chat_history if m["role"] != "system"]
            if len(without) == len(chat_history):
                raise
            return render_chat(
                self.model.tokenizer, without, add_generation_prompt=add_generation_prompt
            )

    # -- requests -----------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        if not requests:
            return []
        results = self.model.loglikelihood(
            [r[1] for r in requests],
            [r[2] for r in requests],
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood over lm_eval's disjoint rolling windows of
        ``max_length`` tokens (the first conditioned on the prefix token)."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for window in map(lm_utils.make_disjoint_window, rolling):
                windows.append((None, *window))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[i] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations per request, in batches of requests that share their gen_kwargs:
        :func:`sampler_for` picks the sampler, ``until`` strings (empty ones dropped) stop a
        row and cut its text, ``max_gen_toks`` caps it, and each prompt keeps its last
        ``max_length - max_gen_toks`` tokens."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            kwargs = dict(normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks))
            until = [s for s in kwargs.pop("until") if s]
            new_tokens = kwargs.pop("max_gen_toks")
            if not 0 < new_tokens < self.max_length:
                raise ConfigError(
                    f"max_gen_toks={new_tokens} must be between 1 and max_length - 1 "
                    f"({self.max_length - 1}); lower it or raise max_length."
                )
            sampler = sampler_for(kwargs)
            prompts = {
                i: self.tok_encode(
                    requests[i].args[0], left_truncate_len=self.max_length - new_tokens
                )
                or [self.prefix_token_id]
                for i in members
            }
            order = sorted(members, key=lambda i: (-len(prompts[i]), prompts[i]))
            step = self.batch_size or GENERATE_BATCH
            for s in range(0, len(order), step):
                rows = order[s : s + step]
                g = self.model.generate(
                    [prompts[i] for i in rows],
                    sampler=sampler,
                    max_new_tokens=new_tokens,
                    stop=until,
                    seed=self.seed,
                )
                for i, text in zip(rows, g.texts, strict=True):
                    out[i] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


def _batch_size(value: int | str | None) -> int | None:
    """lm_eval's batch_size (an int, digits, ``"auto"`` or ``"auto:N"``) → rows, or None."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"batch_size={value!r}: give a positive integer or 'auto'.")
    return n


class LocalTaskManager(TaskManager):
    """lm_eval's ``TaskManager`` over its ``include_path`` only: ``include_defaults`` is
    always False, so none of lm_eval's built-in task YAMLs is read (26,626 YAML loads in
    lm_eval 0.4.13, about 12 s on 2 CPU cores)."""

    def __init__(
        self,
        verbosity: str | None = None,
        include_path: str | Path | list[str | Path] | None = None,
        include_defaults: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(verbosity, include_path, include_defaults=False, metadata=metadata)


def local_tasks(tasks: Sequence[str] | None, include_path: str | None) -> bool:
    """Whether lm_eval would find every name of ``tasks`` without its built-in tasks: each
    is a task or a group defined under ``include_path``, and so is every member of a group,
    recursively. Globs, YAML paths and tags (whose members lm_eval's own tasks may share)
    are not: lm_eval's full index resolves those."""
    if not tasks or not include_path:
        return False
    index = LocalTaskManager(include_path=include_path).task_index

    def defined(name: Any, seen: frozenset[str]) -> bool:
        if isinstance(name, dict):  # a group member given inline: a local task's overrides
            name = name.get("task")
        if not isinstance(name, str) or name in seen or any(c in name for c in "*?["):
            return False
        entry = index.get(name)
        if entry is None or entry.kind.name not in _LOCAL_KINDS:
            return False
        if entry.kind.name != "GROUP":
            return True
        members = (entry.cfg or {}).get("task") or []
        members = [members] if isinstance(members, (str, dict)) else members
        return bool(members) and all(defined(m, seen | {name}) for m in members)

    return all(defined(t, frozenset()) for t in tasks)


@contextmanager
def index_without_builtins() -> Iterator[None]:
    """Within it, ``lm_eval.tasks.TaskManager`` is :class:`LocalTaskManager`: lm_eval's CLI
    looks the class up there when it builds its task index (``EvaluatorConfig.process_tasks``
    in lm_eval 0.4.13). ``lm_eval.evaluator``, which binds the class when first imported, is
    imported before, so it keeps lm_eval's own."""
    importlib.import_module("lm_eval.evaluator")
    saved, lm_eval.tasks.TaskManager = lm_eval.tasks.TaskManager, LocalTaskManager
    try:
        yield
    finally:
        lm_eval.tasks.TaskManager = saved


def run_cli(source: str, lm_eval_args: Sequence[str]) -> None:
    """``phijax eval``: lm_eval's ``run`` with ``--model phijax --model_args {"pretrained":
    source}`` (merged with any ``--model_args`` among ``lm_eval_args``, which are lm_eval's
    own flags). lm_eval 0.4.13 finds no third-party model by entry point, so this module,
    which registers the adapter, is imported first. The flags are parsed by lm_eval's own
    parser; when every ``--tasks`` name is a local task (:func:`local_tasks`) and no
    ``--config`` file may add others, the run's task index is built without lm_eval's
    built-in tasks (:func:`index_without_builtins`); otherwise lm_eval runs as it is."""
    pretrained = json.dumps({"pretrained": str(source)})
    argv = ["phijax eval", "run", "--model", "phijax", "--model_args", pretrained]
    saved, sys.argv = sys.argv, [*argv, *lm_eval_args]
    try:
        args = HarnessCLI().parse_args()
        local = getattr(args, "config", None) is None and local_tasks(
            getattr(args, "tasks", None), getattr(args, "include_path", None)
        )
        with index_without_builtins() if local else nullcontext():
            cli_evaluate()
    finally:
        sys.argv = saved
