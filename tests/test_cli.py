"""The phijax command: inspect output, JSON, and one-line errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from phijax import Sampler
from phijax.cli import main


def test_inspect_smollm2(smollm2_gguf, capsys):
    assert main(["inspect", str(smollm2_gguf)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "architecture    llama",
        "parameters      134.5 M",
        "phijax runs it  yes",
        "9 q / 3 kv, head_dim 64",
        "Q4_1         210",
        "gpt2 (pre 'smollm')",
        "bos 1 '<|im_start|>'",
        "chat template     yes",
    ):
        assert expected in out, expected


def test_inspect_gemma3_explains_why_it_does_not_run(gemma3_gguf, capsys):
    assert main(["inspect", str(gemma3_gguf)]) == 0
    out = capsys.readouterr().out
    assert "phijax runs it  no (gemma3 is not a Phi-3-family architecture" in out
    assert "Q4_K" in out and "Q6_K" in out and "262144 tokens" in out


def test_inspect_json_and_tensor_list(tiny_phi3_gguf, capsys):
    assert main(["inspect", "--json", str(tiny_phi3_gguf)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["num_layers"] == 2 and summary["model"]["phijax_runs_it"]
    assert summary["tensor_types"]["Q8_0"]["tensors"] == 10  # embedding, 4 per layer x 2, output
    assert main(["inspect", "--tensors", str(tiny_phi3_gguf)]) == 0
    assert "blk.1.ffn_down.weight" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 30)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phijax: error: ") and err.count("\n") == 1 and str(bad) in err


def test_console_script_is_installed():
    proc = subprocess.run(["phijax", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "inspect" in proc.stdout


@pytest.mark.parametrize("flags", [["--no-quantized"], ["--quantized"]], ids=["f32", "quantized"])
def test_generate_streams_the_greedy_continuation(flags, smollm2_gguf, smollm2_model, capsys):
    """The same greedy text from packed weights (the same weights; only the order of f32 sums
    differs, and no near-tie falls in these 12 tokens)."""
    argv = [
        "generate",
        "--model",
        str(smollm2_gguf),
        *flags,
        "--chat",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "Say hi",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    expected = smollm2_model.generate(
        "Say hi", chat=True, max_new_tokens=12, sampler=Sampler.greedy()
    ).texts[0]
    assert out == expected + "\n"
    assert "prompt tokens" in err and "new tokens" in err
    assert ("packed weights" in err) == (flags == ["--quantized"])


def test_generate_context_error_is_one_line(smollm2_gguf, capsys):
    argv = [
        "generate",
        "--model",
        str(smollm2_gguf),
        "--max-seq-len",
        "8",
        "--max-new-tokens",
        "50",
        "Hi",
    ]
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("phijax: error: ") and "max_seq_len of 8" in last


def test_chat_is_multi_turn_with_reset(monkeypatch, capsys):
    import io
    from pathlib import Path

    tiny = Path(__file__).parent / "fixtures" / "model" / "sliding_window.gguf"
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand again\n/reset\nhello\n/exit\n"))
    argv = [
        "chat",
        "--model",
        str(tiny),
        "--max-new-tokens",
        "5",
        "--seed",
        "1",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.count("> ") == 5 and "(conversation reset)" in err
    replies = [line for line in out.split("> ") if line.strip()]
    assert len(replies) == 3  # after /reset, "hello" meets the same (empty) history again
    assert replies[0] == replies[2]
