#!/usr/bin/env python3
"""Writes the llama.cpp agreement fixtures for SmolLM2-135M-Instruct (Q4_1 GGUF).

Run once (needs llama-cpp-python; see ../shared/peers/README.md for the wheel):
    python3 scripts/make-llamacpp-fixtures.py [MODEL.gguf]
Outputs, under crates/model/tests/fixtures/:
  llamacpp_tokens.json     texts and llama.cpp's token ids (tokenizer agreement)
  llamacpp_greedy.json     5 chat prompts, their prompt tokens and llama.cpp's greedy 32 tokens
  llamacpp_logits.safetensors
                           teacher forcing over the texts: per position the top-256 token ids
                           and llama.cpp's log-probabilities of them (the remainder mass is
                           1 - sum(exp)); used for argmax agreement and KL(llama.cpp || ours)
"""
import json, os, sys
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import save_file
import jinja2

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "model", "tests", "fixtures")
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/hybrid/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TOPK = 256
# HYBRID_FIXTURE_DECODE=1 evaluates one token at a time (llama.cpp's decode path) instead of
# one batch per text; the two paths of llama.cpp differ from each other (see the README).
DECODE = os.environ.get("HYBRID_FIXTURE_DECODE") == "1"

# Varied texts: prose, dialogue, code, numbers, lists, non-English, odd whitespace.
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin spent about 21.5 hours on the lunar surface, "
    "collecting 47.5 pounds of material, while Michael Collins orbited above in the command module Columbia.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fibonacci(i) for i in range(10)])\n",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, water and carbon dioxide "
    "are turned into glucose and oxygen. The light-dependent reactions happen in the thylakoid membranes, while the Calvin "
    "cycle takes place in the stroma. Without this process, most life on Earth would not exist, because nearly every food "
    "chain begins with organisms that capture sunlight.",
    "Shopping list:\n- 2 kg apples\n- 1 loaf of bread\n- 500 ml milk\n- eggs (12)\n\nTotal budget: $23.75, due 2024-03-15.",
    "Le chat est assis sur le tapis. Der Hund schläft im Garten. El sol brilla en el cielo azul. 東京は日本の首都です。",
    "User: Can you explain recursion?\nAssistant: Recursion is when a function calls itself to solve a smaller instance of "
    "the same problem. Every recursive function needs a base case that stops the calls, otherwise it would run forever. "
    "A classic example is computing a factorial: the factorial of n is n times the factorial of n minus one, and the "
    "factorial of zero is one.",
    "    indented   text\twith\ttabs   and  multiple   spaces...\n\n\nand blank lines; emoji 🙂 and symbols: <>&%#@!",
    "The mitochondria is often called the powerhouse of the cell. It produces adenosine triphosphate through cellular "
    "respiration, a series of reactions that break down glucose in the presence of oxygen. Mitochondria have their own DNA, "
    "which is inherited from the mother, and scientists believe they were once free-living bacteria that entered into a "
    "symbiotic relationship with early eukaryotic cells more than a billion years ago.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker named Elias. Every "
    "morning he opened his shop at seven, wound each of the hundred clocks on the walls, and waited for customers who rarely "
    "came. One winter evening a girl knocked on the door holding a broken pocket watch that had belonged to her grandfather.",
]
TOKENIZER_EXTRA = [
    "", " ", "  leading spaces", "trailing spaces   ", "12345678901234567890", "3.14159 and 2.71828",
    "Hello,world!How are you?", "don't won't I'll they're we've", "<|im_start|>user\nhi<|im_end|>",
    "naïve café résumé coöperate", "🤖🚀✨ unicode 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "tab\tnewline\ncarriage\r\nreturn",
    "URLs like https://example.com/path?q=1&r=2#frag", "CamelCaseIdentifiers and snake_case_names",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain what a prime number is in one sentence.",
    "List three fruits that are red.",
    "How do I reverse a list in Python?",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    m = Llama(model_path=MODEL, n_threads=2, n_ctx=2048, logits_all=True, verbose=False)
    assert m.metadata.get("tokenizer.ggml.add_bos_token", "false") == "false"

    toks = [{"text": t, "ids": m.tokenize(t.encode(), add_bos=False, special=True)} for t in TEXTS + TOKENIZER_EXTRA]
    json.dump(toks, open(os.path.join(OUT, "llamacpp_tokens.json"), "w"), ensure_ascii=False, indent=0)

    ids, logps, targets, seq = [], [], [], []
    for si, t in enumerate(TEXTS):
        tt = m.tokenize(t.encode(), add_bos=False, special=True)
        m.reset()
        if DECODE:
            for x in tt:
                m.eval([x])
        else:
            m.eval(tt)
        logits = np.array(m.scores[: len(tt)], dtype=np.float64)
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        lp = logits - lse[:, None]
        top = np.argsort(-lp, axis=1)[:, :TOPK]
        ids.append(top.astype(np.int32))
        logps.append(np.take_along_axis(lp, top, 1).astype(np.float32))
        seq.append(np.full(len(tt), si, dtype=np.int32))
    ids, logps, seq = np.concatenate(ids), np.concatenate(logps), np.concatenate(seq)
    print("positions:", len(ids), "mean covered mass:", float(np.exp(logps.astype(np.float64)).sum(1).mean()))
    save_file({"top_ids": ids, "top_logprobs": logps, "text_index": seq},
              os.path.join(OUT, "llamacpp_logits_decode.safetensors" if DECODE else "llamacpp_logits.safetensors"))

    tmpl = jinja2.Template(m.metadata["tokenizer.chat_template"])
    greedy = []
    for p in CHAT_PROMPTS:
        text = tmpl.render(messages=[{"role": "user", "content": p}], add_generation_prompt=True)
        prompt = m.tokenize(text.encode(), add_bos=False, special=True)
        m.reset()
        m.eval(prompt)
        out = []
        for _ in range(32):
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
            if nxt == m.token_eos():
                break
            out.append(nxt)
            m.eval([nxt])
        # The same greedy run through llama.cpp's batch path (the whole sequence re-evaluated
        # as one batch each step): how far llama.cpp agrees with itself across its two paths.
        batch_out = []
        for _ in range(32):
            m.reset()
            m.eval(prompt + batch_out)
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
            if nxt == m.token_eos():
                break
            batch_out.append(nxt)
        greedy.append({"prompt": p, "prompt_tokens": prompt, "tokens": out, "tokens_batch_path": batch_out,
                       "text": m.detokenize(out).decode("utf-8", "replace")})
    json.dump(greedy, open(os.path.join(OUT, "llamacpp_greedy.json"), "w"), ensure_ascii=False, indent=1)
    print("wrote fixtures to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
