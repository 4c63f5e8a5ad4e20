#!/usr/bin/env python3
"""Writes small GGUF files for the reader and dequantisation tests, with llama.cpp's own
`gguf` Python package (pip install gguf numpy):

  crates/model/tests/fixtures/quants.gguf       one tensor per supported type (F32, F16, BF16,
                                                Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) plus
                                                metadata of every value type
  crates/model/tests/fixtures/quants_expected.safetensors
                                                the f32 values gguf.quants.dequantize gives
  crates/model/tests/fixtures/unknown_arch.gguf a valid GGUF whose architecture is 'mamba9'
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "model", "tests", "fixtures")
rng = np.random.default_rng(0)


def random_blocks(qt, n_blocks):
    """Random block bytes whose f16 scale fields hold sane values (random bits can be NaN)."""
    block_len, type_size = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scale = lambda: np.array([rng.uniform(0.001, 0.05)], np.float16).view(np.uint8)
    for b in raw:
        if qt in (Q.Q4_K, Q.Q5_K):  # d, dmin first
            b[0:2] = scale(); b[2:4] = scale()
        elif qt == Q.Q6_K:          # d last
            b[-2:] = scale()
    return raw


def main():
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), arch="llama")
    # one metadata key of every value type
    w.add_uint8("test.u8", 200); w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000); w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000); w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5); w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo"); w.add_uint64("test.u64", 2**60)
    w.add_int64("test.i64", -2**60); w.add_float64("test.f64", 2.25)
    w.add_array("test.array", [1, 2, 3]); w.add_array("test.strings", ["a", "bc"])
    expected = {}
    rows, cols = 4, 512
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w.add_tensor("f32", x, raw_dtype=Q.F32); expected["f32"] = x
    h = x.astype(np.float16)
    w.add_tensor("f16", h, raw_dtype=Q.F16); expected["f16"] = h.astype(np.float32)
    bf = gguf.quants.quantize(x, Q.BF16)
    w.add_tensor("bf16", bf, raw_dtype=Q.BF16)
    expected["bf16"] = gguf.quants.dequantize(bf, Q.BF16).reshape(rows, cols)
    for name, qt in [("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1)]:
        q = gguf.quants.quantize(x, qt)
        w.add_tensor(name, q, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(q, qt).reshape(rows, cols)
    for name, qt in [("q4_k", Q.Q4_K), ("q5_k", Q.Q5_K), ("q6_k", Q.Q6_K)]:
        n_blocks = rows * cols // gguf.QK_K
        raw = random_blocks(qt, n_blocks).reshape(rows, -1)
        w.add_tensor(name, raw, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(raw, qt).reshape(rows, cols).astype(np.float32)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in expected.items()},
              os.path.join(OUT, "quants_expected.safetensors"))

    w = gguf.GGUFWriter(os.path.join(OUT, "unknown_arch.gguf"), arch="mamba9")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
