"""
bench.py: how much the KV cache speeds up group sampling (model.generate), as a ratio.

    python bench.py               # both settings below, on the CPU
    python bench.py --device=cuda

Each setting samples the same prompts, each repeated G times, with and without the cache, from the
same generator, and checks that both paths wrote the same tokens before it reports the speed-up.
"toy" matches train_toy.py (a ~45-token prompt, a ~31-token grid to write); "text" matches the
small CPU preset of train_llm.py (a ~200-token prompt, ~120 new tokens).
"""

import sys
import time

import torch

from model import GPT, GPTConfig, generate

SETTINGS = {
    # name: (model config, prompts, group size G, prompt length, new tokens)
    "toy": (GPTConfig(vocab_size=263, block_size=128, n_layer=2, n_head=4, n_embd=128), 16, 8, 45, 31),
    "text": (GPTConfig(vocab_size=2055, block_size=384, n_layer=4, n_head=4, n_embd=128), 8, 8, 200, 120),
}


def time_generate(model, ids, attn, new_tokens, use_cache):
    best, out = float("inf"), None
    for _ in range(3 if use_cache else 1):  # best of 3; the slow uncached path once is enough
        g = torch.Generator(device=ids.device).manual_seed(0)
        t0 = time.perf_counter()
        # end_id=-1 never matches, so every row writes all new_tokens: both paths do the same work
        out, _ = generate(model, ids, attn, new_tokens, end_id=-1, pad_id=0, temperature=1.0, generator=g,
                          use_cache=use_cache)
        if ids.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(device="cpu"):
    torch.manual_seed(0)
    print(f"{'setting':8s} {'rows':>5s} {'prompt':>6s} {'new':>4s} {'cached s':>9s} {'uncached s':>10s} {'speed-up':>8s}")
    for name, (cfg, prompts, G, T, new) in SETTINGS.items():
        model = GPT(cfg).to(device).eval()
        ids = torch.randint(0, cfg.vocab_size - 10, (prompts, T), device=device).repeat_interleave(G, 0)
        attn = torch.ones_like(ids)
        fast, a = time_generate(model, ids, attn, new, use_cache=True)
        slow, b = time_generate(model, ids, attn, new, use_cache=False)
        same = "" if torch.equal(a, b) else "  (tokens differ!)"
        print(f"{name:8s} {ids.size(0):5d} {T:6d} {new:4d} {fast:9.3f} {slow:10.3f} {slow / fast:7.1f}x{same}")


if __name__ == "__main__":
    bad = [a for a in sys.argv[1:] if not a.startswith("--device=")]
    if bad:
        sys.exit(f"unknown option(s) {bad}; the only option is --device=cpu|cuda")
    main(sys.argv[1].split("=", 1)[1] if len(sys.argv) > 1 else "cpu")
