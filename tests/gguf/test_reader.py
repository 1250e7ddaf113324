"""GGUFFile against the gguf package's own reader, on real and synthetic files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from phijax.errors import GGUFFormatError, HubError
from phijax.gguf import GGUFFile


def _assert_same_as_gguf_reader(path) -> None:
    ours, ref = GGUFFile(path), gguf.GGUFReader(path)
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.ggml_type == t.tensor_type
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert (info.offset, info.nbytes) == (t.data_offset, t.n_bytes)
        np.testing.assert_array_equal(ours.raw(t.name), t.data.reshape(-1).view(np.uint8))
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for key in ref_keys:
        expected, got = ref.fields[key].contents(), ours.metadata[key]
        if isinstance(expected, list) and expected and not isinstance(expected[0], str):
            np.testing.assert_array_equal(got, np.asarray(expected), err_msg=key)
        else:
            assert got == expected or np.array_equal(got, expected), key


def test_matches_gguf_reader_on_smollm2(smollm2_gguf):
    _assert_same_as_gguf_reader(smollm2_gguf)


@pytest.mark.slow
def test_matches_gguf_reader_on_gemma3(gemma3_gguf):
    _assert_same_as_gguf_reader(gemma3_gguf)


def test_matches_gguf_reader_on_synthetic(tiny_phi3_gguf):
    _assert_same_as_gguf_reader(tiny_phi3_gguf)


def test_synthetic_metadata_values(tiny_phi3_gguf, tiny_config):
    f = GGUFFile(tiny_phi3_gguf)
    assert f.version == 3 and f.architecture == "phi3" and f.alignment == 32
    assert f.metadata["phi3.block_count"] == tiny_config.num_layers
    assert f.metadata["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert f.metadata["tokenizer.ggml.scores"].dtype == np.float32
    assert f.metadata["tokenizer.chat_template"] == "{{ messages }}"
    qkv = f.tensor("blk.0.attn_qkv.weight")
    assert qkv.type_name == "Q8_0" and qkv.shape == (64 + 2 * 32, 64)
    assert qkv.nbytes == 128 * 64 // 32 * 34
    assert f.data_offset % 32 == 0 and all(t.offset % 32 == 0 for t in f.tensors.values())
    assert "tiny-phi3" in repr(f)


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_custom_alignment(256)
    w.add_tensor("a", np.arange(7, dtype=np.float32))
    w.add_tensor("b", np.ones((3, 5), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)
    assert f.alignment == 256 and f.tensors["b"].offset % 256 == 0
    np.testing.assert_array_equal(f.raw("a").view(np.float32), np.arange(7, dtype=np.float32))


def test_dequantize_matches_gguf_quants(tiny_phi3_gguf):
    f = GGUFFile(tiny_phi3_gguf)
    for name in ("blk.0.attn_qkv.weight", "token_embd.weight", "output_norm.weight"):
        info = f.tensor(name)
        expected = gguf.quants.dequantize(f.raw(name).reshape(info.shape[0], -1), info.ggml_type)
        got = f.dequantize(name)
        assert got.dtype == np.float32 and got.shape == info.shape
        np.testing.assert_array_equal(got, expected.reshape(info.shape))


def test_unknown_tensor_name_suggests_near_names(tiny_phi3_gguf):
    with pytest.raises(GGUFFormatError, match=r"blk\.0\.attn_qkv\.weight"):
        GGUFFile(tiny_phi3_gguf).tensor("blk.0.attn_qkv")


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(HubError, match="no such file"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(HubError, match="is a directory"):
        GGUFFile(tmp_path)
