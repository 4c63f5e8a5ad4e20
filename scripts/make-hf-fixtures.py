#!/usr/bin/env python3
"""Golden fixtures for Hugging Face checkpoint families (issue 10), made with transformers 5.x.

Run on the GPU machine (torch there; transformers from carried wheels if it is missing):

    python3 scripts/make-hf-fixtures.py OUTDIR

For each family a tiny random-weight checkpoint folder, as `save_pretrained` writes it
(config.json, safetensors — one folder sharded with an index, one in bf16 —, a word-level
tokenizer.json over the 256-token vocabulary, tokenizer_config.json with a chat template), and
`fixture.safetensors` with transformers' own f32 logits for fixed token ids:
- `input_ids` [T] (int64), `prefill_logits` [T, V]: one forward over all T tokens;
- `decode_logits` [T - split, V]: the first `split` tokens as a prefill, then one token at a time
  through transformers' cache (`split` [1], int64).
Weights are the default init plus noise (norm weights around 1), so every path carries signal.
Computed on the CPU in float32 with eager attention. Families whose classes are missing in the
installed transformers are skipped with a message.
"""
import json
import os
import sys

import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else "hf-fixtures"
V, T, SPLIT = 256, 12, 6

COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def families():
    import transformers as tf
    out = []
    out.append(("llama", "LlamaConfig", "LlamaForCausalLM",
                dict(COMMON, head_dim=16, tie_word_embeddings=False), dict(shard=True)))
    out.append(("qwen2", "Qwen2Config", "Qwen2ForCausalLM",
                dict(COMMON, tie_word_embeddings=False), dict(dtype=torch.bfloat16)))
    out.append(("qwen3", "Qwen3Config", "Qwen3ForCausalLM",
                dict(COMMON, head_dim=16, tie_word_embeddings=True), {}))
    out.append(("qwen3_next", "Qwen3NextConfig", "Qwen3NextForCausalLM",
                dict(COMMON, num_hidden_layers=4, head_dim=16, partial_rotary_factor=0.25,
                     layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                     linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                     linear_num_key_heads=2, linear_num_value_heads=4,
                     num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                     shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[0],
                     norm_topk_prob=True, tie_word_embeddings=False), {}))
    out.append(("kimi_linear", "KimiLinearConfig", "KimiLinearForCausalLM",
                dict(COMMON, num_hidden_layers=3, num_key_value_heads=4,
                     kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8,
                     v_head_dim=16, mla_use_nope=True,
                     num_experts=4, num_experts_per_token=2, num_shared_experts=1,
                     moe_intermediate_size=32, moe_router_activation_func="sigmoid",
                     moe_renormalize=True, routed_scaling_factor=2.0, first_k_dense_replace=1,
                     pad_token_id=0,
                     linear_attn_config={"head_dim": 16, "num_heads": 4, "short_conv_kernel_size": 4,
                                         "kda_layers": [1, 2], "full_attn_layers": [3]},
                     tie_word_embeddings=False), {}))
    return tf, out


def tokenizer_files(d):
    vocab = {f"t{i}": i for i in range(V)}
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}
    json.dump(tok, open(os.path.join(d, "tokenizer.json"), "w"))
    json.dump({"bos_token": "t1", "eos_token": "t2", "add_bos_token": False, "chat_template": CHAT},
              open(os.path.join(d, "tokenizer_config.json"), "w"))


def perturb(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.03 * torch.randn(p.shape, generator=g))


def main():
    from safetensors.torch import save_file
    tf, fams = families()
    os.makedirs(OUT, exist_ok=True)
    summary = {"transformers": tf.__version__, "torch": torch.__version__, "families": {}}
    for name, cfg_cls, model_cls, cfg, opts in fams:
        if not hasattr(tf, cfg_cls) or not hasattr(tf, model_cls):
            print(f"{name}: transformers {tf.__version__} has no {model_cls}; skipped")
            summary["families"][name] = "missing"
            continue
        try:
            g = torch.Generator().manual_seed(0)
            config = getattr(tf, cfg_cls)(**cfg, attn_implementation="eager")
            model = getattr(tf, model_cls)(config).float().eval()
            perturb(model, g)
            dtype = opts.get("dtype", torch.float32)
            if dtype != torch.float32:
                # The reference runs on the weights the folder holds (rounded to bf16).
                model = model.to(dtype).float()
            ids = torch.randint(3, V, (1, T), generator=g)
            with torch.no_grad():
                prefill = model(ids).logits[0].float()
                out = model(ids[:, :SPLIT], use_cache=True)
                past, steps = out.past_key_values, []
                for t in range(SPLIT, T):
                    out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    steps.append(out.logits[0, -1].float())
            d = os.path.join(OUT, name)
            os.makedirs(d, exist_ok=True)
            kw = {"max_shard_size": "100KB"} if opts.get("shard") else {}
            model.to(dtype).save_pretrained(d, **kw)
            tokenizer_files(d)
            save_file({"input_ids": ids[0].contiguous(), "prefill_logits": prefill.contiguous(),
                       "decode_logits": torch.stack(steps).contiguous(),
                       "split": torch.tensor([SPLIT])}, os.path.join(d, "fixture.safetensors"))
            drift = (prefill[SPLIT:] - torch.stack(steps)).abs().max().item()
            size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            print(f"{name}: {sorted(os.listdir(d))}, {size} bytes; prefill vs cached decode {drift:.2e}")
            summary["families"][name] = {"files": sorted(os.listdir(d)), "bytes": size,
                                         "prefill_vs_decode": drift}
        except Exception as e:  # a family that does not build here is reported, not fatal
            import traceback
            traceback.print_exc()
            summary["families"][name] = f"error: {e}"
    json.dump(summary, open(os.path.join(OUT, "summary.json"), "w"), indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
