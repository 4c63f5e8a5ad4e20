#!/usr/bin/env python3
"""Decode benchmark, hybrid and llama.cpp side by side in one run, on the same GGUF and the
same prompt token ids: prompt N tokens, generate M greedily, batch 1, T threads.

    python3 scripts/bench-llamacpp.py [--model PATH] [--threads 2] [--prompt-tokens 128]
        [--gen-tokens 128] [--reps 3] [--out bench/decode-cpu.json]

Prints one JSON object: both engines' prefill and decode tokens/s (median of reps after a
warm-up) and the ratios hybrid/llama.cpp (higher is better for tokens/s).
"""
import argparse, json, os, platform, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/hybrid/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "hybrid"))
    ap.add_argument("--out")
    a = ap.parse_args()

    from llama_cpp import Llama
    import numpy as np

    # hybrid's own numbers, from its bench command (it prints the token ids it used too).
    cmd = [a.bin, "--threads", str(a.threads), "bench", "decode", "--model", a.model,
           "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens), "--reps", str(a.reps)]
    ours = json.loads(subprocess.check_output(cmd))

    m = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, verbose=False)
    prompt = ours["prompt_ids"]
    pre, dec = [], []
    for rep in range(a.reps + 1):
        m.reset()
        t0 = time.perf_counter()
        m.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(a.gen_tokens):
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
            m.eval([nxt])
        t2 = time.perf_counter()
        if rep > 0:
            pre.append(len(prompt) / (t1 - t0))
            dec.append(a.gen_tokens / (t2 - t1))
    theirs = {"prefill_tokens_per_s": statistics.median(pre), "decode_tokens_per_s": statistics.median(dec)}
    ours.pop("prompt_ids")
    res = {
        "bench": "decode", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": a.threads, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "reps": a.reps,
        "hybrid": ours, "llama_cpp": theirs,
        "ratio_decode_hybrid_over_llamacpp": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "ratio_prefill_hybrid_over_llamacpp": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
    }
    s = json.dumps(res, indent=1)
    print(s)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        open(a.out, "w").write(s + "\n")


if __name__ == "__main__":
    main()
