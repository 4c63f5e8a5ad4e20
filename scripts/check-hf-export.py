#!/usr/bin/env python3
"""Reads the folders `hybrid export` wrote with transformers and compares its logits with ours.

    HYBRID_EXPORT_KEEP=DIR cargo test --release -p hybrid-model --test hf_families exported
    python3 scripts/check-hf-export.py DIR        # on the GPU machine (transformers, torch)

Each DIR/<family>/ holds an exported checkpoint and ours.safetensors (input_ids, our f32
logits). Prints the largest |difference| relative to the largest logit per folder and exits 1
if any exceeds 1e-4.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

root = sys.argv[1]
worst, out = 0.0, {}
for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    ours = load_file(os.path.join(d, "ours.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(ours["input_ids"][None]).logits[0]
    err = ((logits - ours["logits"]).abs().max() / ours["logits"].abs().max()).item()
    out[name] = {"architecture": type(model).__name__, "max_rel_err": err}
    worst = max(worst, err)
print(json.dumps(out, indent=1))
sys.exit(0 if worst < 1e-4 else 1)
