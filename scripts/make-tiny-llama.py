#!/usr/bin/env python3
"""Writes crates/model/tests/fixtures/tiny-llama.gguf: a random-weight Llama (2 layers, width
128, 4 query / 2 key-value heads of 32, MLP 256, vocabulary 512, Q8_0 and F32 tensors) in
llama.cpp's layout, for tests that need a real GGUF model small enough to ship and to carry
to the GPU machine (pip install gguf numpy)."""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "model", "tests", "fixtures", "tiny-llama.gguf")
rng = np.random.default_rng(1)
V, D, L, H, HK, F = 512, 128, 2, 4, 2, 256
DH = D // H
w = gguf.GGUFWriter(OUT, arch="llama")
w.add_block_count(L); w.add_context_length(1024); w.add_embedding_length(D); w.add_feed_forward_length(F)
w.add_head_count(H); w.add_head_count_kv(HK); w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5); w.add_rope_dimension_count(DH)

def mat(name, rows, cols, qt=Q.Q8_0, std=0.08):
    x = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
    w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)

def vec(name, n):
    w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

mat("token_embd.weight", V, D, std=0.5)
vec("output_norm.weight", D)
for l in range(L):
    vec(f"blk.{l}.attn_norm.weight", D)
    mat(f"blk.{l}.attn_q.weight", H * DH, D)
    mat(f"blk.{l}.attn_k.weight", HK * DH, D)
    mat(f"blk.{l}.attn_v.weight", HK * DH, D)
    mat(f"blk.{l}.attn_output.weight", D, H * DH)
    vec(f"blk.{l}.ffn_norm.weight", D)
    mat(f"blk.{l}.ffn_gate.weight", F, D, Q.Q4_1)
    mat(f"blk.{l}.ffn_up.weight", F, D, Q.Q4_1)
    mat(f"blk.{l}.ffn_down.weight", D, F, Q.Q4_1)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")
