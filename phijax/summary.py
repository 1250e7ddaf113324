"""A readable summary of a GGUF file, behind ``phijax inspect``: what ``gguf-dump`` prints,
organized for a person.

``summarize`` returns plain data (JSON-ready); ``format_summary`` renders it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import gguf

from phijax.config import Phi3Config, resolve_sliding_window
from phijax.errors import PhijaxError
from phijax.gguf import GGUFFile

_SPECIAL_TOKENS = ("bos", "eos", "eot", "eom", "unknown", "padding", "seperator", "mask")


def summarize(f: GGUFFile) -> dict[str, Any]:
    """Facts about ``f``: file, model shape, tensor types, tokenizer and whether phijax runs it."""
    meta = f.metadata
    arch = f.architecture
    try:
        config = Phi3Config.from_gguf(f)
        runnable, reason = (
            True,
            ("phi3 layout" if arch == "phi3" else "llama layout, rewritten to phi3 on load"),
        )
    except PhijaxError as e:
        config, runnable, reason = None, False, str(e).split(": ", 1)[-1].rstrip(".")
    types: dict[str, dict[str, int]] = {}
    for t in f.tensors.values():
        row = types.setdefault(t.type_name, {"tensors": 0, "elements": 0, "bytes": 0})
        row["tensors"] += 1
        row["elements"] += t.n_elements
        row["bytes"] += t.nbytes
    n_params = sum(r["elements"] for r in types.values())
    file_type = meta.get("general.file_type")
    with contextlib.suppress(ValueError):
        file_type = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    return {
        "file": {
            "path": str(f.path),
            "bytes": f.size,
            "gguf_version": f.version,
            "alignment": f.alignment,
            "metadata_keys": len(meta),
            "tensors": len(f.tensors),
        },
        "model": {
            "name": meta.get("general.name"),
            "architecture": arch,
            "parameters": n_params,
            "file_type": file_type,
            "phijax_runs_it": runnable,
            "why": reason,
        },
        "config": None if config is None else _config_dict(config),
        "sliding_window": None if config is None else _window(config, f.path),
        "arch_keys": None
        if config
        else {k: _json_value(v) for k, v in meta.items() if arch and k.startswith(f"{arch}.")},
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"])),
        "tokenizer": _tokenizer_summary(meta),
    }


def _window(config: Phi3Config, path: object) -> dict[str, Any]:
    """The window ``phijax.load`` uses by default (``sliding_window="auto"``), and why."""
    window, why = resolve_sliding_window(config, "auto", path)
    return {"declared": config.sliding_window, "used": window, "why": why}


def _config_dict(config: Phi3Config) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def _json_value(value: Any) -> Any:
    """A metadata value for the JSON summary: Python values, an array over 8 items as
    ``"<array of N>"``. Not :func:`phijax.errors.short_repr`: this is data, not message text."""
    if hasattr(value, "__len__") and not isinstance(value, str) and len(value) > 8:
        return f"<array of {len(value)}>"
    return value.tolist() if hasattr(value, "tolist") else value


def _tokenizer_summary(meta: dict[str, Any]) -> dict[str, Any] | None:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        return None
    special = {}
    for kind in _SPECIAL_TOKENS:
        tid = meta.get(f"tokenizer.ggml.{kind}_token_id")
        if isinstance(tid, int) and not isinstance(tid, bool):
            special[kind] = {"id": tid, "text": tokens[tid] if 0 <= tid < len(tokens) else None}
    types = meta.get("tokenizer.ggml.token_type")
    type_names = {
        1: "normal",
        2: "unknown",
        3: "control",
        4: "user_defined",
        5: "unused",
        6: "byte",
    }
    template = meta.get("tokenizer.chat_template")
    return {
        "model": meta.get("tokenizer.ggml.model"),
        "pre": meta.get("tokenizer.ggml.pre"),
        "vocab_size": len(tokens),
        "merges": len(meta.get("tokenizer.ggml.merges", [])),
        "has_scores": "tokenizer.ggml.scores" in meta,
        "token_types": (
            {type_names.get(int(k), str(k)): v for k, v in sorted(Counter(types.tolist()).items())}
            if types is not None and hasattr(types, "tolist")
            else None
        ),
        "special_tokens": special,
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": meta.get("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": meta.get("tokenizer.ggml.add_space_prefix"),
        "chat_template_chars": len(template) if isinstance(template, str) else None,
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def format_summary(s: dict[str, Any]) -> str:
    """Render ``summarize``'s output as aligned text sections."""
    lines: list[str] = []

    def section(title: str, rows: list[tuple[str, Any]]) -> None:
        lines.append(title)
        width = max(len(k) for k, _ in rows)
        lines.extend(f"  {k:<{width}}  {v}" for k, v in rows if v is not None)
        lines.append("")

    fi, mo = s["file"], s["model"]
    section(
        "File",
        [
            ("path", fi["path"]),
            ("size", _size(fi["bytes"])),
            ("format", f"GGUF v{fi['gguf_version']}, alignment {fi['alignment']}"),
            ("contents", f"{fi['metadata_keys']} metadata keys, {fi['tensors']} tensors"),
        ],
    )
    section(
        "Model",
        [
            ("name", mo["name"]),
            ("architecture", mo["architecture"]),
            ("parameters", _count(mo["parameters"])),
            ("file type", mo["file_type"]),
            ("phijax runs it", f"{'yes' if mo['phijax_runs_it'] else 'no'} ({mo['why']})"),
        ],
    )
    if (c := s["config"]) is not None:
        rope = f"neox, {c['rotary_dim']}/{c['head_dim']} dims, base {c['rope_theta']:g}"
        if c["rope_scaling"] == "longrope":
            rope += (
                f", LongRoPE (original context {c['original_context_length']}, "
                f"attn factor {c['rope_attn_factor']:.4f})"
            )
        elif c["rope_scaling"] == "linear":
            rope += f", linear scaling x{c['rope_scaling_factor']:g}"
        section(
            "Shape",
            [
                ("context length", c["context_length"]),
                ("layers", c["num_layers"]),
                ("hidden", c["hidden_size"]),
                ("ffn", c["intermediate_size"]),
                ("heads", f"{c['num_heads']} q / {c['num_kv_heads']} kv, head_dim {c['head_dim']}"),
                ("rope", rope),
                ("sliding window", s["sliding_window"]["why"]),
                ("rms eps", f"{c['rms_norm_eps']:g}"),
                ("vocab (embedding rows)", c["vocab_size"]),
                ("output head", "tied to token_embd" if c["tie_word_embeddings"] else "separate"),
            ],
        )
    elif s["arch_keys"]:
        section(f"{mo['architecture']} keys", list(s["arch_keys"].items()))
    total = sum(r["bytes"] for r in s["tensor_types"].values()) or 1
    lines.append("Tensor types")
    lines.append(
        f"  {'type':<8} {'tensors':>7} {'params':>10} {'bytes':>10} {'share':>6} {'bits/w':>6}"
    )
    for name, r in s["tensor_types"].items():
        lines.append(
            f"  {name:<8} {r['tensors']:>7} {_count(r['elements']):>10} {_size(r['bytes']):>10} "
            f"{100 * r['bytes'] / total:>5.1f}% {8 * r['bytes'] / r['elements']:>6.2f}"
        )
    lines.append("")
    if (t := s["tokenizer"]) is not None:
        special = ", ".join(f"{k} {v['id']} {v['text']!r}" for k, v in t["special_tokens"].items())
        section(
            "Tokenizer",
            [
                ("kind", f"{t['model']} (pre {t['pre']!r})" if t["pre"] else t["model"]),
                (
                    "vocab",
                    f"{t['vocab_size']} tokens, {t['merges']} merges, scores {'yes' if t['has_scores'] else 'no'}",
                ),
                (
                    "token types",
                    ", ".join(f"{k} {v}" for k, v in (t["token_types"] or {}).items()) or None,
                ),
                ("special", special or "none"),
                ("add bos / eos", f"{t['add_bos_token']} / {t['add_eos_token']}"),
                ("add space prefix", t["add_space_prefix"]),
                (
                    "chat template",
                    f"yes ({t['chat_template_chars']} chars)" if t["chat_template_chars"] else "no",
                ),
            ],
        )
    return "\n".join(lines).rstrip() + "\n"
