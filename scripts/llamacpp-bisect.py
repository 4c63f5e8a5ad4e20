#!/usr/bin/env python3
"""Finds the first op where our CPU forward and llama.cpp's stop agreeing bit for bit.

llama.cpp side: llama-cpp-python's low-level API with a `cb_eval` callback that copies every
f32 intermediate (attn_norm-0, Qcur-0, kq-0, kq_soft_max-0, kqv_out-0, ffn_swiglu-0, ...).
Our side: `cargo run --release -p hybrid-model --example dump_taps`, which names its taps the
same way. Both run the same token ids; the report walks llama.cpp's graph order and prints, per
tensor, the fraction of bit-identical values, stopping after the first few that differ.

    python3 scripts/llamacpp-bisect.py [--prefix N] [--text-index I] [--show K]

--prefix N runs the first N tokens as one batch and the rest one token at a time (the decode
path), dumping only the last token's step; without it the whole text is one batch.
"""
import argparse, ctypes, json, os, subprocess, sys, tempfile
import numpy as np
import llama_cpp as L
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
MODEL = os.path.expanduser("~/.cache/hybrid/models/SmolLM2-135M-Instruct.Q4_1.gguf")


class GgmlTensor(ctypes.Structure):  # ggml.h's struct ggml_tensor (GGML_MAX_DIMS 4, MAX_SRC 10)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def llama_dump(tokens, prefix):
    out, order, armed = {}, [], [False]

    @ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
    def cb(ptr, ask, _):
        if ask or not armed[0]:
            return armed[0]
        t = GgmlTensor.from_address(ptr)
        if t.type != 0:  # f32 only
            return True
        ne, nb = list(t.ne), list(t.nb)
        arr = np.empty((ne[3], ne[2], ne[1], ne[0]), np.float32)
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                for i1 in range(ne[1]):
                    off = t.data + i1 * nb[1] + i2 * nb[2] + i3 * nb[3]
                    raw = (ctypes.c_char * (nb[0] * (ne[0] - 1) + 4)).from_address(off)
                    arr[i3, i2, i1] = np.frombuffer(raw, np.uint8)[np.arange(ne[0])[:, None] * nb[0] + np.arange(4)].view(np.float32).reshape(-1)
        name, key, k = t.name.decode(), t.name.decode(), 1
        while key in out:
            key, k = f"{name}#{k}", k + 1
        out[key] = arr.reshape(-1)
        order.append(key)
        return True

    L.llama_backend_init()
    model = L.llama_model_load_from_file(MODEL.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 2048, 2048, 2, 2
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = cb
    ctx = L.llama_init_from_model(model, cp)

    def decode(ids):
        arr = (L.llama_token * len(ids))(*ids)
        assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) == 0

    rest = tokens
    if prefix:
        decode(tokens[:prefix])
        for x in tokens[prefix:-1]:
            decode([x])
        rest = tokens[-1:]
    armed[0] = True
    decode(rest)
    return out, order


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", type=int, default=0)
    ap.add_argument("--text-index", type=int, default=8)
    ap.add_argument("--show", type=int, default=3)
    a = ap.parse_args()
    texts = json.load(open(os.path.join(ROOT, "crates/model/tests/fixtures/llamacpp_tokens.json")))
    tokens = texts[a.text_index]["ids"]
    theirs, order = llama_dump(tokens, a.prefix)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ours.safetensors")
        env = dict(os.environ, HYBRID_DUMP_PREFIX=str(a.prefix))
        subprocess.run(["cargo", "run", "-q", "--release", "-p", "hybrid-model", "--example", "dump_taps", "--",
                        path, ",".join(map(str, tokens))], check=True, cwd=ROOT, env=env)
        ours = load_file(path)
    print(f"{len(tokens)} tokens, prefix {a.prefix}: llama.cpp tensor, bit-identical fraction, max |diff|")
    shown = 0
    for k in order:
        if k not in ours:
            continue
        x, y = theirs[k], ours[k]
        if k.startswith(("Qcur", "Kcur")):
            # Our Q/K rows are in Hugging Face order (pair i at i, i + 32); llama.cpp's GGUF
            # rows put pair i at 2i, 2i + 1.
            y = y.reshape(-1, 2, 32).transpose(0, 2, 1).reshape(-1)
        y = y[-x.size:]  # llama.cpp keeps only the output rows in its last layer
        same = float((x.view(np.uint32) == y.view(np.uint32)).mean())
        print(f"  {k:24s} {same:.4f}  {float(np.abs(x - y).max()):.3g}")
        if same < 1.0:
            shown += 1
            if shown >= a.show:
                break
    print("all compared tensors bit-identical" if shown == 0 else f"{shown} tensors differ (first shown above)")


if __name__ == "__main__":
    sys.exit(main())
