"""
bench.py: speed, printed as ratios on a CPU, and the GPU check on a CUDA machine.

    python bench.py               # CPU: the KV cache's speed-up, and a GRPO step before/after the fast paths
    python bench.py --gpu         # CUDA: the GPU check below, each figure next to its goal, PASS or FAIL
    python bench.py --gpu --small # the same check at toy sizes (the test suite runs it on the CPU)
    python bench.py --toy         # one seed of train_toy.py, its seconds split by part (any toy option may follow)

Ratios first. "cache" samples the same prompts with and without the KV cache, from the same generator, and
checks both wrote the same tokens. "grpo step" times one GRPO step (sample a group, reward it, reference
and policy passes) the way this code did it before and the way it does now, in one run: before, each
prompt was read G times, every pass was left-padded with an explicit attention mask and the end of
sampling was checked at every token; now each prompt is read once and its cache repeated, scoring and
the update are right-padded with no mask (one causal kernel), and the end is checked every 8 tokens.

The GPU check (the train_llm.py GPU defaults: two 8-layer, 512-wide GPTs, context 1,280 with rotary positions
as ScienceWorld's recipe sets them, bf16 autocast), 8 minutes or less on one H100:
the card and versions; SFT tokens/s and MFU (nanoGPT's 6N + 12 L T C flops per token against the card's
bf16 dense peak); decode tokens/s of group sampling against the bound set by reading the weights and the
KV cache once per token; seconds per GRPO step of each phase, split into sampling, reward, reference and
policy, with the peak memory of each; which attention kernel the unmasked causal passes get; a falling SFT
loss; and the default run's first stages (FIRST_STAGES: pretraining and SFT on ScienceWorld's large set, with
step caps), its held-out metrics after SFT against the copy floor and the majority action.
"""

import math
import random
import sys
import time

import torch
import torch.nn.functional as F

from data import collate, make_codec
from grpo import GRPOConfig, grpo_step
import swirl
from model import GPT, GPTConfig, generate, span_logprobs

SETTINGS = {
    # name: (model config, prompts, group size G, prompt length, new tokens)
    "toy": (GPTConfig(vocab_size=263, block_size=128, n_layer=2, n_head=4, n_embd=128), 16, 8, 45, 31),
    "text": (GPTConfig(vocab_size=2055, block_size=384, n_layer=4, n_head=4, n_embd=128), 8, 8, 200, 120),
}

# bf16 dense peak FLOP/s and memory bandwidth (bytes/s) of the cards we know, from their data sheets
CARDS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12), "L40S": (362e12, 0.86e12),
         "L4": (121e12, 0.3e12), "4090": (165e12, 1.0e12), "A10": (125e12, 0.6e12)}


def timed(fn, device, repeat=1):
    """(best seconds of `repeat` calls, the last call's result); waits for the GPU before reading the clock."""
    best, out = float("inf"), None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_prompts(cfg, n, length, device, seed=0):
    """n prompts of about `length` tokens (lengths vary by a fifth, so that batches are padded)."""
    rng = random.Random(seed)
    return [[rng.randrange(cfg.vocab_size - 10) for _ in range(length - rng.randrange(length // 5 + 1))]
            for _ in range(n)]


# ----------------------------------------------------------------------------------------------------
# Ratios on any device


def cache_speedup(device):
    print(f"{'setting':8s} {'rows':>5s} {'prompt':>6s} {'new':>4s} {'cached s':>9s} {'uncached s':>10s} {'speed-up':>8s}")
    for name, (cfg, prompts, G, T, new) in SETTINGS.items():
        torch.manual_seed(0)
        model = GPT(cfg).to(device).eval()
        ids = torch.randint(0, cfg.vocab_size - 10, (prompts, T), device=device)
        attn = torch.ones_like(ids)

        def sample(use_cache):  # end_id=-1 never matches: every row writes all new tokens, both paths alike
            g = torch.Generator(device=device).manual_seed(0)
            return generate(model, ids, attn, new, end_id=-1, pad_id=0, generator=g, num_samples=G,
                            use_cache=use_cache)[0]

        fast, a = timed(lambda: sample(True), device, repeat=3)
        slow, b = timed(lambda: sample(False), device)
        same = "" if torch.equal(a, b) else "  (tokens differ!)"
        print(f"{name:8s} {a.size(0):5d} {T:6d} {new:4d} {fast:9.3f} {slow:10.3f} {slow / fast:7.1f}x{same}")


def grpo_step_parts(model, reference, reward_model, prompts, G, new, device, before=False, micro_batch=0):
    """One GRPO step on random prompts, timed by part: {part: (seconds, peak GPU bytes)}. The reward is the
    reward model's mean log-prob of the samples (as SWIRL's rewards are log-likelihoods)."""
    parts = {}

    def part(name, fn):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, out = timed(fn, device)
        parts[name] = (seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
        return out

    side = "left" if before else "right"
    ids, attn, _ = collate(prompts, pad_id=0, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    if before:  # every prompt read G times, the end checked at every token
        sample = lambda: generate(model, ids.repeat_interleave(G, 0), attn.repeat_interleave(G, 0), new, end_id=-1,
                                  pad_id=0, generator=g, check_every=1)
    else:
        sample = lambda: generate(model, ids, attn, new, end_id=-1, pad_id=0, generator=g, num_samples=G)
    toks, _ = part("sampling", sample)
    rows = [p for p in prompts for _ in range(G)]
    full, mask, span = collate(rows, toks.tolist(), device=device, side=side)
    mask = mask if before else None

    def logprobs(m, sel=slice(None)):
        return span_logprobs(m, full[sel], None if mask is None else mask[sel], span[sel])

    with torch.no_grad():
        rewards = part("reward", lambda: logprobs(reward_model).sum(1) / span.sum(1))
        part("reference", lambda: logprobs(reference))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # the policy part runs grpo_step with beta = 0, so that it does not repeat the reference pass timed above
    part("policy", lambda: grpo_step(model, reference, opt, logprobs, rewards, span, G, GRPOConfig(beta=0.0),
                                     micro_batch=micro_batch))
    return parts


def grpo_speedup(device):
    cfg, n_prompts, G, T, new = SETTINGS["text"]
    torch.manual_seed(0)
    model, reference, reward_model = (GPT(cfg).to(device) for _ in range(3))
    prompts = random_prompts(cfg, n_prompts, T, device)
    before = grpo_step_parts(model, reference, reward_model, prompts, G, new, device, before=True)
    after = grpo_step_parts(model, reference, reward_model, prompts, G, new, device)
    print(f"\nGRPO step, 'text' setting ({n_prompts} prompts x G = {G}, {T}-token prompts, {new} new tokens):")
    print(f"{'part':10s} {'before s':>9s} {'now s':>9s} {'speed-up':>8s}")
    for name in before:
        print(f"{name:10s} {before[name][0]:9.3f} {after[name][0]:9.3f} {before[name][0] / after[name][0]:7.2f}x")
    total_before, total_after = sum(v[0] for v in before.values()), sum(v[0] for v in after.values())
    print(f"{'step':10s} {total_before:9.3f} {total_after:9.3f} {total_before / total_after:7.2f}x")
    return total_before / total_after


# ----------------------------------------------------------------------------------------------------
# The GPU check


def verdict(ok):
    return "n/a (no goal on this device)" if ok is None else ("PASS" if ok else "FAIL")


def card_numbers(device):
    """(name, bf16 peak FLOP/s or None, bandwidth bytes/s or None) of the device."""
    if device.type != "cuda":
        return "cpu", None, None
    name = torch.cuda.get_device_name(device)
    for key, (flops, bandwidth) in CARDS.items():
        if key in name:
            return name, flops, bandwidth
    return name, None, None


def flops_per_token(cfg, n_params, T):
    """nanoGPT's estimate (PaLM appendix B): 6 N for the weights, 12 L T C for attention, forward + backward."""
    return 6 * n_params + 12 * cfg.n_layer * T * cfg.n_embd


def gpu_check(device, small=False, out_dir="out-bench"):
    """Print every figure of the GPU check with its goal and PASS/FAIL; returns the figures (a dict)."""
    on_gpu = device.type == "cuda"
    name, peak, bandwidth = card_numbers(device)
    print(f"device: {name}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"bf16 {'yes' if on_gpu and torch.cuda.is_bf16_supported() else 'no'}")
    if small:  # the same code at toy sizes, for the test suite and a quick look on a CPU
        cfg = GPTConfig(vocab_size=2055, block_size=128, n_layer=2, n_head=2, n_embd=64)
        batch, T, n_prompts, G, prompt_len, new, steps = 4, 96, 2, 4, 48, 16, 3
    else:  # train_llm.py's GPU defaults
        cfg = GPTConfig(vocab_size=2055, block_size=1280, n_layer=8, n_head=8, n_embd=512, rope=True)
        batch, T, n_prompts, G, prompt_len, new, steps = 32, 1000, 32, 8, 600, 300, 20
    dtype = torch.bfloat16 if on_gpu else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype, enabled=on_gpu)
    figures = {}
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    n_params = model.num_params()
    print(f"model: {cfg.n_layer} layers, {cfg.n_embd} wide, {n_params / 1e6:.1f}M parameters, "
          f"compute dtype {dtype}")

    # which kernel the unmasked causal passes (SFT, scoring, GRPO's update) get
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(2, cfg.n_head, 64, cfg.n_embd // cfg.n_head, device=device, dtype=dtype)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        kernel = "flash"
    except RuntimeError:
        kernel = "not flash (efficient or math)"
    figures["flash"] = kernel == "flash"
    print(f"attention, causal with no mask: {kernel}  goal: flash on a GPU  {verdict(figures['flash'] if on_gpu else None)}")

    # SFT: forward, backward and AdamW on full right-padded batches, as swirl.sft runs them
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size - 10, (batch, T), device=device)

    def sft_step():
        with autocast:
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sft_step()  # warm-up (kernels chosen, memory allocated)
    seconds, _ = timed(lambda: [sft_step() for _ in range(steps)], device)
    tokens_per_s = steps * batch * (T - 1) / seconds
    mfu = tokens_per_s * flops_per_token(cfg, n_params, T) / peak if peak else None
    figures.update(sft_tokens_per_s=tokens_per_s, mfu=mfu)
    print(f"SFT: {tokens_per_s:,.0f} tokens/s" + (f", MFU {mfu:.1%}  goal: >= 40%  {verdict(mfu >= 0.4)}"
                                                   if mfu is not None else "  (MFU: no peak known for this device)"))

    # decode: a group of G samples for each prompt, every row writing all `new` tokens
    model.eval()
    prompts = random_prompts(cfg, n_prompts, prompt_len, device)
    ids, attn, _ = collate(prompts, pad_id=0, device=device)
    with autocast:
        seconds, _ = timed(lambda: generate(model, ids, attn, new, end_id=-1, pad_id=0, num_samples=G,
                                            generator=torch.Generator(device=device).manual_seed(0)), device)
    rows = n_prompts * G
    decode = rows * new / seconds
    bytes_per_step = 2 * n_params + rows * cfg.n_layer * 2 * (prompt_len + new / 2) * cfg.n_embd * 2
    bound = rows * bandwidth / bytes_per_step if bandwidth else None
    figures.update(decode_tokens_per_s=decode, decode_bound=bound)
    print(f"decode: {decode:,.0f} tokens/s ({rows} rows)" +
          (f", bandwidth bound {bound:,.0f}  goal: within 3x  {verdict(decode * 3 >= bound)}" if bound else ""))

    # a GRPO step of each phase (the FWM writes states, the IDM short actions), split into its parts
    for phase, phase_new in (("phase I (FWM)", new), ("phase II (IDM)", max(4, new // 20))):
        reference, reward_model = GPT(cfg).to(device).eval(), GPT(cfg).to(device).eval()
        with autocast:
            parts = grpo_step_parts(model, reference, reward_model, prompts, G, phase_new, device,
                                    micro_batch=64 if not small else 0)
        peak_memory = max(m for _, m in parts.values())
        figures[phase] = parts
        cells = ", ".join(f"{k} {s:.2f} s" + (f" / {m / 2**30:.1f} GiB" if on_gpu else "") for k, (s, m) in parts.items())
        print(f"GRPO step, {phase}: {sum(s for s, _ in parts.values()):.2f} s ({cells})" +
              (f"  goal: peak <= 24 GiB  {verdict(peak_memory <= 24 * 2**30)}" if on_gpu else ""))

    figures["run"] = short_run(device, small, out_dir)
    return figures


# The first stages of the GPU default run (`python train_llm.py`: ScienceWorld's large set, the GPU preset and
# the data set's recipe), with step caps that fit the GPU check's 8 minutes on one H100: the held-out metrics
# after SFT, against the floors.
FIRST_STAGES = ["--stop_after=sft", "--pretrain_steps=1000", "--sft_max_steps=1500", "--max_eval=500"]


def short_run(device, small, out_dir):
    """train_llm.py with its defaults: an SFT loss that falls, then a run with finite metrics.
    On a GPU the run is FIRST_STAGES, its SFT row checked against the floors (the FWM at the copy floor's
    ROUGE-L or above, the IDM at three times the majority action or more). small: a whole run of a few steps
    on a few gridworld episodes written as JSONL instead of ScienceWorld, so that it takes seconds."""
    import json

    import swirl
    import train_llm

    args = [f"--out_dir={out_dir}", f"--device={device.type}", "--samples=0"]
    if small:
        args += tiny_text_data(out_dir) + ["--sft_max_steps=20", "--sft_eval_every=10", "--max_eval=4",
                                           "--iterations=1", "--steps_per_phase=2", "--best_of=2"]
    else:
        args += FIRST_STAGES
    cfg, scfg = train_llm.configure(args)
    labelled, val, unlabelled, _ = train_llm.load_data(cfg)
    tok = train_llm.make_tokenizer(cfg, labelled + val + unlabelled)
    new_model, mcfg, _ = train_llm.model_factory(cfg, tok, device)
    codec = make_codec(tok, mcfg.block_size, labelled, unlabelled, state_slot=cfg.state_slot).to(device)
    examples = [codec.fwm_example(t.x, t.action, t.y) for t in val[:8]]
    steps = 20 if small else 200
    torch.manual_seed(0)
    model = new_model()
    _, _, autocast = train_llm.setup_devices(cfg)
    with autocast, torch.no_grad():
        start = swirl.sft_loss(model, examples).item()
    with autocast:
        swirl.sft(model, [codec.fwm_example(t.x, t.action, t.y) for t in labelled], None, scfg, random.Random(0),
                  steps=steps)
        with torch.no_grad():
            end = swirl.sft_loss(model, examples).item()
    print(f"SFT loss on held-out transitions: {start:.3f} -> {end:.3f} after {steps} steps  "
          f"goal: falls  {verdict(end < start)}")
    t0 = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_llm.main(args)
    with open(f"{out_dir}/results.json") as f:
        results = json.load(f)
    finite = all(math.isfinite(v) for s in results["stages"] for k, v in s.items() if k != "stage")
    print(f"train_llm.py {' '.join(args[1:])}: {len(results['stages'])} stage(s) in {time.time() - t0:.0f} s, "
          f"metrics finite  goal: finite  {verdict(finite)}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        print(f"peak memory of that run: {peak / 2**30:.1f} GiB  goal: <= 24 GiB  {verdict(peak <= 24 * 2**30)}")
    sft, floors = results["stages"][0], results["floors"]
    copies = sft["fwm_rougeL"] >= floors["y=x"]["fwm_rougeL"]
    reads = sft["idm_action_acc"] >= 3 * floors["majority"]["idm_action_acc"]
    print(f"after SFT, held out: FWM ROUGE-L {sft['fwm_rougeL']:.3f}, exact {sft['fwm_exact']:.3f} (y = x: "
          f"{floors['y=x']['fwm_rougeL']:.3f}, {floors['y=x']['fwm_exact']:.3f})  goal: at the copy floor or above  "
          f"{verdict(None if small else copies)}")
    print(f"after SFT, held out: IDM {sft['idm_action_acc']:.3f} (majority {floors['majority']['idm_action_acc']:.3f})"
          f"  goal: 3x the majority or more  {verdict(None if small else reads)}")
    return {"sft_loss": (start, end), "finite": finite, "sft": sft, "floors": floors}


def tiny_text_data(out_dir):
    """A few 3x3 gridworld episodes as JSONL in out_dir (half the training ones without actions, the test
    file gzipped) and train_llm.py's options for them at toy sizes (the tests use them too)."""
    import os

    from data import Episode, write_episodes
    from toy_envs import GridWorld, make_episodes

    states, actions = make_episodes(GridWorld(3, 1, 1, 3), 16, seed=0)
    train = [Episode(s, a if i % 2 == 0 else [None] * len(a)) for i, (s, a) in enumerate(zip(states[:12], actions[:12]))]
    write_episodes(os.path.join(out_dir, "train.jsonl"), train)
    write_episodes(os.path.join(out_dir, "test.jsonl.gz"), [Episode(s, a) for s, a in zip(states[12:], actions[12:])])
    return [f"--data={out_dir}/train.jsonl", f"--eval_data={out_dir}/test.jsonl.gz", "--preset=cpu", "--n_layer=1",
            "--n_head=2", "--n_embd=16", "--block_size=48", "--vocab_size=270", "--prompts_per_step=2",
            "--group_size=2", "--confidence=0.0", "--pretrain_steps=10"]


# ----------------------------------------------------------------------------------------------------
# Where one toy seed's time goes


# the stages of a run (outer parts) and what they spend their time on (inner parts), as swirl names them
OUTER = {"pretrain_fwm": "pretraining", "warm_start": "SFT", "phase_fwm": "phase I", "phase_idm": "phase II",
         "evaluate": "evaluation", "pseudo_label": "Bootstrap's labels"}
INNER = {"sample_completions": "sampling", "mean_logprob": "rewards and scores",
         "policy_update": "GRPO updates", "infer_actions": "the IDM's greedy actions", "check": "held-out checks"}


def toy_parts(options):
    """Run one toy seed (`python train_toy.py` with these options) with a clock on each of swirl's parts.
    Returns (wall seconds, {(outer, inner): [seconds, calls]}), inner "all" for an outer part's whole time.
    A warm start is named by its desc (sft, bootstrap, sft_continue, oracle). An inner part is counted
    only where no other inner part is running, so inner times add up to at most their outer part's."""
    import train_toy  # an entry point, imported here only: the other modes need nothing of the toy

    times, stack, inner_busy = {}, [], []

    def clocked(fn, name, outer):
        def wrapper(*args, **kw):
            label = (f"SFT: {kw.get('desc', 'sft')}" if name == "warm_start" else OUTER[name]) if outer else INNER[name]
            key = (label, "all") if outer else ((stack[-1] if stack else "-"), label)
            counted = outer or not inner_busy
            (stack if outer else inner_busy).append(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                (stack if outer else inner_busy).pop()
                if counted:
                    entry = times.setdefault(key, [0.0, 0])
                    entry[0] += time.perf_counter() - t0
                    entry[1] += 1
        return wrapper

    saved = {name: getattr(swirl, name) for name in [*OUTER, *INNER] if name != "check"}
    saved_check = swirl.BestWeights.check
    try:
        for name, fn in saved.items():
            setattr(swirl, name, clocked(fn, name, name in OUTER))
        swirl.BestWeights.check = clocked(saved_check, "check", False)
        t0 = time.perf_counter()
        train_toy.main(["--samples=0", *options])
        wall = time.perf_counter() - t0
    finally:
        for name, fn in saved.items():
            setattr(swirl, name, fn)
        swirl.BestWeights.check = saved_check
    return wall, times


def toy_profile(options):
    wall, times = toy_parts(options)
    print(f"\none toy seed ({' '.join(options) or 'the defaults'}) on {torch.get_num_threads()} thread(s): "
          f"{wall:.1f} s; each part's seconds and share of the run")
    outers = sorted({o for o, i in times if i == "all"}, key=lambda o: -times[(o, "all")][0])
    for outer in outers:
        seconds, calls = times[(outer, "all")]
        print(f"  {outer:28s} {seconds:7.1f} s {seconds / wall:6.1%}  ({calls} call{'s' * (calls > 1)})")
        for (o, inner), (sec, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
            if o == outer and inner != "all":
                print(f"      {inner:24s} {sec:7.1f} s {sec / wall:6.1%}")
    rest = wall - sum(times[(o, "all")][0] for o in outers)
    print(f"  {'the rest (data, tables)':28s} {rest:7.1f} s {rest / wall:6.1%}")
    return wall, times


def main(argv):
    if argv[:1] == ["--toy"]:
        toy_profile(argv[1:])
        return
    known = {"--gpu", "--small", "--device=cpu", "--device=cuda"}
    bad = [a for a in argv if a not in known]
    if bad:
        sys.exit(f"unknown option(s) {bad}; options: --gpu, --small, --device=cpu|cuda, or --toy [toy options]")
    gpu = "--gpu" in argv
    if gpu and not torch.cuda.is_available() and "--small" not in argv:
        sys.exit("--gpu needs a CUDA device (add --small to run the same check at toy sizes on this CPU)")
    device = torch.device("cuda" if (gpu and torch.cuda.is_available()) or "--device=cuda" in argv else "cpu")
    if gpu:
        gpu_check(device, small="--small" in argv)
    else:
        cache_speedup(device)
        grpo_speedup(device)


if __name__ == "__main__":
    main(sys.argv[1:])
