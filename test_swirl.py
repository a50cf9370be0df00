"""
test_swirl.py: tests that compare against an oracle (a slow loop, an uncached path, a hand-computed
value). Run with `python -m pytest -q test_swirl.py`. Every test uses tiny sizes and runs in seconds.
"""

import json
import math
import re

import pytest
import torch

import common
import data
import grpo
from model import GPT, GPTConfig, generate, load_checkpoint, model_from_state, model_state, save_checkpoint
from model import span_logprobs

# ----------------------------------------------------------------------------------------------------
# model.py


def tiny_model(seed=0, vocab=40, block=64, rope=False):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, rope=rope)).eval()


def slow_logprobs(model, seq, start, temperature=1.0):
    """Oracle: for each completion position t >= start, run the model on seq[:t] alone."""
    out = []
    for t in range(start, len(seq)):
        logits = model(torch.tensor([seq[:t]]))[0, -1] / temperature
        out.append(torch.log_softmax(logits.float(), -1)[seq[t]].item())
    return out


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("side", ["left", "right"])
def test_span_logprobs_match_slow_loop_with_padding(temperature, side, rope):
    """Left-padded with its mask, or right-padded with no mask at all (causal attention only): the same
    log-probs as each sequence alone, token by token; with learned or rotary positions."""
    model = tiny_model(rope=rope)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    comps = [[11, 12], [13, 14, 15, 16], [17]]
    ids, attn, span = data.collate(prompts, comps, pad_id=0, side=side)
    lp = span_logprobs(model, ids, attn if side == "left" else None, span, temperature)
    for b in range(3):
        want = slow_logprobs(model, prompts[b] + comps[b], len(prompts[b]), temperature)
        got = lp[b][span[b].bool()].tolist()
        assert got == pytest.approx(want, abs=1e-5)
        assert (lp[b][~span[b].bool()] == 0).all()


@pytest.mark.parametrize("rope", [False, True])
def test_left_padding_changes_no_logprob(rope):
    model = tiny_model(rope=rope)
    ids, attn, span = data.collate([[1, 2, 3]], [[4, 5]], pad_id=0)
    alone = span_logprobs(model, ids, attn, span)[span.bool()]
    ids2, attn2, span2 = data.collate([[1, 2, 3], list(range(1, 20))], [[4, 5], [6]], pad_id=0)
    padded = span_logprobs(model, ids2, attn2, span2)[0][span2[0].bool()]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("check_every", [1, 8])
def test_cached_sampling_equals_uncached_sampling(check_every, rope):
    """The fast path (each prompt read once, its cache repeated for the group of 4, the end checked every
    check_every tokens) writes the tokens of the oracle: rows repeated first, no cache, checked every token.
    Rotary: the cached keys keep their own position's turn."""
    model = tiny_model(rope=rope)
    ids, attn, _ = data.collate([[1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=0)
    kwargs = dict(max_new_tokens=12, end_id=3, pad_id=0, temperature=0.9, top_k=30, top_p=0.95)
    a, ma = generate(model, ids, attn, generator=torch.Generator().manual_seed(7), num_samples=4,
                     check_every=check_every, **kwargs)
    b, mb = generate(model, ids.repeat_interleave(4, 0), attn.repeat_interleave(4, 0), use_cache=False,
                     generator=torch.Generator().manual_seed(7), check_every=1, **kwargs)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert a.shape[0] == 12 and bool(ma[:, -1].any())  # no column after every row had stopped


def test_cache_is_kept_in_the_compute_dtype():
    model = tiny_model()
    assert model.new_cache(2, 8)[0].k.dtype == torch.float32
    ids, attn, _ = data.collate([[1, 2, 3, 4], [5, 6]], pad_id=0)
    with torch.no_grad():
        fp32 = model(ids, attn)[:, -1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache = model.new_cache(2, 8)
            bf16 = model(ids, attn, cache)[:, -1]
    assert cache[0].k.dtype == torch.bfloat16 and cache[0].length == 4
    assert torch.allclose(bf16.float(), fp32, atol=0.05)  # the same logits, to bf16's precision


def test_generate_stops_at_end_masks_and_pads():
    model = tiny_model()
    ids, attn, _ = data.collate([[1, 2], [4, 5, 6]], pad_id=0)
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[[3, 10, 11]] = True  # only tokens 10, 11 and the end token 3 may be written
    toks, mask = generate(model, ids.repeat_interleave(8, 0), attn.repeat_interleave(8, 0), 20, end_id=3,
                          pad_id=0, allowed_ids=allowed, generator=torch.Generator().manual_seed(0))
    for row, m in zip(toks.tolist(), mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # real tokens, then padding
        assert set(row[:n]) <= {3, 10, 11}
        if 3 in row[:n]:
            assert row.index(3) == n - 1 and all(t == 0 for t in row[n:])


@pytest.mark.parametrize("rope", [False, True])
def test_padding_in_prompt_does_not_change_sampled_tokens(rope):
    model = tiny_model(rope=rope)
    kwargs = dict(max_new_tokens=10, end_id=3, pad_id=0, temperature=0)  # greedy: deterministic per row
    ids, attn, _ = data.collate([[1, 2, 5]], pad_id=0)
    alone, _ = generate(model, ids, attn, **kwargs)
    ids2, attn2, _ = data.collate([[1, 2, 5], list(range(4, 30))], pad_id=0)
    batched, _ = generate(model, ids2, attn2, **kwargs)
    assert alone[0].tolist() == batched[0, : alone.shape[1]].tolist()


def test_rotary_turns_by_hand_and_sees_only_distances():
    """rotate by hand: the pair (1, 0) turned by the angle pos * freq is (cos, sin) of it, freq = 1 for the
    first pair and 10000^(-1/2) for the second of a head of 4. A query at m and a key at n score the
    same as at m + c and n + c: only their distance counts."""
    from model import rotary_angles, rotate
    pos = torch.tensor([[3]])
    x = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)  # pairs (x0, x2) and (x1, x3), each (1, 0)
    got = rotate(x, *rotary_angles(pos, 4)).flatten().tolist()
    want = [math.cos(3), math.cos(3 / 100), math.sin(3), math.sin(3 / 100)]
    assert got == pytest.approx(want, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(m, n):
        return (rotate(q, *rotary_angles(torch.tensor([[m]]), 8)) * rotate(k, *rotary_angles(torch.tensor([[n]]), 8))).sum().item()

    assert score(9, 4) == pytest.approx(score(59, 54), abs=1e-4)
    assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-4)


def test_rotary_model_has_no_position_table_and_round_trips(tmp_path):
    """A rotary GPT keeps no learned positions; its checkpoint rebuilds the same model."""
    model = tiny_model(rope=True)
    assert model.wpe is None and model.num_params() == sum(p.numel() for p in model.parameters())
    again = model_from_state(model_state(model))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(ids), again(ids))


def test_top_p_keeps_the_nucleus():
    from model import sample_next
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_p=0.7, generator=g)) for _ in range(300)}
    assert picks == {0, 1}  # 0.5 < 0.7 so token 1 is needed; 0.8 >= 0.7 so token 2 is not


def test_sampling_draws_each_token_with_its_probability():
    from model import sample_next
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05])  # two tokens of probability 0 (a logit mask's -inf)
    logits = torch.log(probs).expand(200_000, -1)
    picks = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=6).double() / picks.numel()
    assert freq[0] == 0 and freq[2] == 0  # never a token the mask ruled out
    assert torch.allclose(freq, probs.double(), atol=0.004)  # 4 standard errors at most


def test_one_query_attention_equals_the_fused_kernel():
    """A sampling step's attention (one query, written out) against the fused kernel with the same mask."""
    import torch.nn.functional as F
    from model import CausalSelfAttention, LayerCache
    torch.manual_seed(0)
    attn = CausalSelfAttention(GPTConfig(n_embd=32, n_head=4)).eval()
    x = torch.randn(3, 1, 32)
    allowed = torch.rand(3, 1, 1, 7) > 0.3
    allowed[..., -1] = True  # the query sees itself at least
    cache = LayerCache(3, 4, 8, 8, "cpu", torch.float32)
    cache.append(torch.randn(3, 4, 6, 8), torch.randn(3, 4, 6, 8))
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(3, 1, 4, 8).transpose(1, 2) for t in (q, k, v))
    keys, values = torch.cat([cache.k[:, :, :6], k], 2), torch.cat([cache.v[:, :, :6], v], 2)
    fused = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed).transpose(1, 2).reshape(3, 1, 32)
    with torch.no_grad():
        assert torch.allclose(attn(x, allowed, cache), attn.c_proj(fused), atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "ck" / "m.pt")
    save_checkpoint(path, model=model_state(model), step=3)
    state = load_checkpoint(path)
    again = model_from_state(state["model"]).eval()
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(x), again(x)) and state["step"] == 3


def test_sequence_longer_than_block_is_an_error():
    model = tiny_model(block=8)
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds block_size=8"):
        generate(model, torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long), 4, end_id=3, pad_id=0)


# ----------------------------------------------------------------------------------------------------
# grpo.py


def test_advantages_are_per_group():
    r = torch.tensor([1.0, 3.0, 10.0, 30.0])
    adv = grpo.group_advantages(r, group_size=2)
    assert adv.tolist() == pytest.approx([-1, 1, -1, 1], abs=1e-3)  # each group standardised on its own
    dr = grpo.group_advantages(r, group_size=2, scale_rewards=False)
    assert dr.tolist() == pytest.approx([-1, 1, -10, 10])


@pytest.mark.parametrize("G", [1, 3, 8])
def test_equal_rewards_give_exactly_zero_advantage(G):
    r = torch.full((2 * G,), 0.1) * torch.tensor(3.0)  # 0.30000000000000004-style float noise
    r[:G] = r[:G] + torch.linspace(0, 1e-9, G)  # a tiny float std must not blow up
    adv = grpo.group_advantages(r, G)
    assert torch.isfinite(adv).all() and (adv == 0).all()


def test_k3_kl_is_non_negative_and_zero_for_identical():
    a, b = torch.randn(1000), torch.randn(1000)
    assert (grpo.k3_kl(a, b) >= 0).all()
    assert (grpo.k3_kl(a, a) == 0).all()


def test_reductions_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert grpo.reduce_tokens(per_token, mask, "grpo").item() == pytest.approx((1.5 + 4) / 2)
    assert grpo.reduce_tokens(per_token, mask, "dapo").item() == pytest.approx(7 / 3)
    assert grpo.reduce_tokens(per_token, mask, "dr_grpo").item() == pytest.approx(7 / 6)
    with pytest.raises(ValueError, match="unknown loss_type"):
        grpo.reduce_tokens(per_token, mask, "ppo")


def test_padding_changes_no_loss():
    logp, old, ref = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    cfg = grpo.GRPOConfig(beta=0.1)
    base, _ = grpo.grpo_loss(logp, old, ref, adv, mask, cfg)
    pad = lambda t, v: torch.cat([t, torch.full((2, 2), v)], 1)  # two extra padded columns of junk
    for lt in grpo.LOSS_TYPES[:2]:  # dr_grpo divides by the width by design
        cfg.loss_type = lt
        a, _ = grpo.grpo_loss(logp, old, ref, adv, mask, cfg)
        b, _ = grpo.grpo_loss(pad(logp, 5.0), pad(old, -3.0), pad(ref, 9.0), adv, pad(mask, 0), cfg)
        assert a.item() == pytest.approx(b.item())


def bandit_setup(seed=0):
    """One prompt; completions are a single token; the reward prefers token 7."""
    model = tiny_model(seed)
    prompt = torch.tensor([[1, 2, 3]])
    return model, prompt


def bandit_logprobs(prompt, tokens):
    ids = torch.cat([prompt.expand(len(tokens), -1), tokens[:, None]], 1)
    attn = torch.ones_like(ids)
    span = torch.zeros_like(ids)
    span[:, -1] = 1
    return lambda m: span_logprobs(m, ids, attn, span), span


def test_first_inner_step_ratio_one_loss_zero_grad_nonzero():
    model, prompt = bandit_setup()
    tokens = torch.tensor([5, 7, 9, 7])
    fn, span = bandit_logprobs(prompt, tokens)
    rewards = (tokens == 7).float()
    adv = grpo.group_advantages(rewards, 4)
    logp = fn(model)
    loss, stats = grpo.grpo_loss(logp, logp.detach(), logp.detach(), adv, span, grpo.GRPOConfig(beta=0.04))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # ratio 1, advantages sum to zero, KL 0
    loss.backward()
    assert model.wte.weight.grad.abs().sum() > 0
    assert stats["kl"] == 0 and stats["clip_frac"] == 0


def test_grpo_raises_probability_of_rewarded_token():
    torch.manual_seed(0)
    model, prompt = bandit_setup()
    ref = tiny_model()  # same seed -> same weights as the policy at the start
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = grpo.GRPOConfig(beta=0.01, mu=2)
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[5:10] = True  # five possible answers: chance is 0.2

    def p7(m):
        with torch.no_grad():
            return torch.softmax(model(prompt)[0, -1].masked_fill(~allowed, -1e9), -1)[7].item()

    before = p7(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        toks, _ = generate(model, prompt.repeat(8, 1), torch.ones(8, 3, dtype=torch.long), 1, end_id=0, pad_id=0,
                           allowed_ids=allowed, generator=g)
        ids = torch.cat([prompt.repeat(8, 1), toks], 1)
        span = torch.zeros_like(ids)
        span[:, -1] = 1
        fn = lambda m, rows: span_logprobs(m, ids[rows], None, span[rows], allowed_ids=allowed)
        stats = grpo.grpo_step(model, ref, opt, fn, (toks[:, 0] == 7).float(), span, 8, cfg)
    assert before < 0.3 and p7(model) > 0.8
    assert math.isfinite(stats["grad_norm"]) and 0 <= stats["zero_std_frac"] <= 1


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_step_with_mu_one_reuses_the_gradient_pass_for_old_logprobs(beta):
    """mu = 1 takes the old log-probs from the gradient pass: the update must equal the slow path that
    computes them in a separate no-grad pass first, with one forward pass fewer."""
    tokens = torch.tensor([5, 7, 9, 7, 5, 5, 9, 7])
    rewards = torch.tensor([0.0, 1.0, 0.2, 0.9, -1.0, 0.0, 0.5, 0.7])
    cfg = grpo.GRPOConfig(beta=beta, mu=1)
    fast, prompt = bandit_setup()
    slow, ref = tiny_model(), tiny_model(1)
    fn, span = bandit_logprobs(prompt, tokens)
    calls = []
    stats = grpo.grpo_step(fast, ref, torch.optim.AdamW(fast.parameters(), lr=1e-2),
                           lambda m, rows: calls.append(m) or fn(m)[rows], rewards, span, 4, cfg)
    assert len(calls) == (2 if beta else 1)  # (the reference and) the policy's gradient pass
    opt = torch.optim.AdamW(slow.parameters(), lr=1e-2)
    with torch.no_grad():
        old, ref_logp = fn(slow), fn(ref)
    loss, _ = grpo.grpo_loss(fn(slow), old, ref_logp if beta else old, grpo.group_advantages(rewards, 4), span, cfg)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(slow.parameters(), cfg.max_grad_norm)
    opt.step()
    assert stats["loss"] == pytest.approx(loss.item(), abs=1e-7)
    for a, b in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_micro_batches_make_the_same_update(loss_type):
    """micro_batch splits the forward passes, not the maths: 8 rows in micro-batches of 3, 3 and 2 give the
    update, loss and stats of all 8 at once (two inner steps, a KL to a reference that differs)."""
    tokens = torch.tensor([5, 7, 9, 7, 5, 5, 9, 7])
    rewards = torch.tensor([0.0, 1.0, 0.2, 0.9, -1.0, 0.0, 0.5, 0.7])
    cfg = grpo.GRPOConfig(beta=0.1, mu=2, loss_type=loss_type)
    results = []
    for micro_batch in (0, 3):
        policy, prompt = bandit_setup()
        fn, span = bandit_logprobs(prompt, tokens)
        span[::3, -2] = 1  # completions of two lengths, so that the reductions differ
        passes = []
        # plain SGD: Adam would blow float noise in a near-zero gradient up to a full step
        stats = grpo.grpo_step(policy, tiny_model(1), torch.optim.SGD(policy.parameters(), lr=0.5),
                               lambda m, rows: passes.append(rows) or fn(m)[rows] * span[rows], rewards, span, 4, cfg,
                               micro_batch=micro_batch)
        results.append((stats, list(policy.parameters()), passes))
    (whole, w_params, w_passes), (micro, m_params, m_passes) = results
    assert all(r.stop - r.start <= 3 for r in m_passes) and len(m_passes) == 3 * len(w_passes)
    for key in whole:
        assert micro[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(w_params, m_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# data.py


@pytest.mark.parametrize("text", ["#..A\n.#..\n", "héllo wörld → ∑ 日本", "take key; open door", ""])
def test_byte_tokenizer_round_trip(text):
    tok = data.byte_tokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text


def test_specials_are_never_produced_by_text_but_decode_stops_at_end():
    tok = data.byte_tokenizer()
    assert tok.end_id not in tok.encode("a <|end|> b")
    assert tok.decode(tok.encode("ab") + [tok.end_id] + tok.encode("zz")) == "ab"
    assert tok.decode([tok.pad_id, tok.pad_id] + tok.encode("ok")) == "ok"


def test_bpe_trains_round_trips_and_caches(tmp_path):
    corpus = ["You are in the kitchen. You see a fridge, a stove and a table."] * 20 + ["Ünïcode ok → 日本語"]
    cache = str(tmp_path / "bpe.tiktoken")
    tok = data.bpe_tokenizer(corpus, 300, cache)
    assert tok.vocab_size == 300 + len(data.SPECIALS)
    for text in corpus + ["unseen words: zebra 123 €", "<|end|> inside text"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(corpus[0])) < len(corpus[0]) // 2  # the merges compress
    again = data.bpe_tokenizer(corpus, 300, cache)  # loaded from the cache
    assert again.encode(corpus[0]) == tok.encode(corpus[0])
    other = data.bpe_tokenizer(["something else entirely"] * 5, 280, cache)  # stale cache is replaced
    assert other.vocab_size <= 280 + len(data.SPECIALS)


def test_bpe_matches_merge_order_by_hand():
    ranks = data.train_bpe(["aaab aaab"], 258)
    assert ranks[b"aa"] == 256  # the most frequent pair ("a","a" occurs 4 times) is merged first


def test_layouts_and_collate_masks():
    tok = data.byte_tokenizer()
    p = data.fwm_prompt(tok, "AB", "up")
    assert p == [tok.action_id, ord("u"), ord("p"), tok.state_id, 65, 66, tok.next_id]
    q = data.idm_prompt(tok, "AB", "CD", shared=True)
    assert q[:2] == [tok.idm_id, tok.state_id] and q[-1] == tok.action_id
    c = data.completion(tok, "C")
    ids, attn, span = data.collate([p, q], [c, c], pad_id=tok.pad_id)
    assert attn[0].tolist() == [0] * (len(q) - len(p)) + [1] * (len(p) + 2)
    assert span.sum(1).tolist() == [2, 2] and ids[0, -2:].tolist() == c


def test_state_slot_puts_every_y_at_one_distance_from_its_x():
    """In a slot, x is padded to slot tokens: y's i-th token sits slot + 1 tokens after x's i-th whatever
    x's length (FWM: y is the completion; IDM: y follows <|next|>); a longer x is kept whole."""
    tok = data.byte_tokenizer()
    for x in ("AB", "ABCDE"):
        p = data.fwm_prompt(tok, x, "up", slot=6)
        x_start = p.index(tok.state_id) + 1
        assert p[x_start : x_start + len(x)] == list(x.encode()) and len(p) - x_start == 6 + 1
        q = data.idm_prompt(tok, x, "CD", slot=6)
        x_start, y_start = q.index(tok.state_id) + 1, q.index(tok.next_id) + 1
        assert y_start - x_start == 6 + 1 and set(q[x_start + len(x) : y_start - 1]) <= {tok.pad_id}
    assert data.fwm_prompt(tok, "ABCDEFGH", "up", slot=6) == data.fwm_prompt(tok, "ABCDEFGH", "up")
    assert data.idm_prompt(tok, "AB", "CD", slot=0) == data.idm_prompt(tok, "AB", "CD")


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_load_episodes_good_file_and_gz(tmp_path):
    rows = [{"states": ["a", "b", "c"], "actions": ["x", None]}, {"states": ["d", "e"]}]
    path = write_lines(tmp_path / "ok.jsonl", [json.dumps(r) for r in rows] + [""])
    eps = data.load_episodes(path)
    trans = data.transitions(eps)
    assert [(t.x, t.y, t.action) for t in trans] == [("a", "b", "x"), ("b", "c", None), ("d", "e", None)]
    lab, unlab = data.labelled_and_unlabelled(trans)
    assert len(lab) == 1 and len(unlab) == 2
    gz = str(tmp_path / "ok.jsonl.gz")
    data.write_episodes(gz, eps)
    assert [e.states for e in data.load_episodes(gz)] == [e.states for e in eps]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"states": ["a", "b"]', "not valid JSON .* at column 22"),  # just past the line's 21 characters
        ('{"states": ["a" "b"]}', "not valid JSON .* at column 17"),  # the missing comma's place
        ('["a", "b"]', "expected a JSON object"),
        ('{"actions": ["x"]}', 'missing "states"'),
        ('{"states": ["only one"]}', "at least two states"),
        ('{"states": ["a", 3]}', "list of strings"),
        ('{"states": ["a", "b", "c"], "actions": ["x"]}', "need 2 actions"),
        ('{"states": ["a", "b"], "actions": [7]}', "strings or nulls"),
        ('{"states": ["a", "b"], "action": ["x"]}', "unknown key"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"states": ["a", "b"]}', line])
    with pytest.raises(data.DataError, match=message) as e:
        data.load_episodes(path)
    assert f"{path}:2:" in str(e.value) and "Fix:" in str(e.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(data.DataError, match="holds no episodes"):
        data.load_episodes(write_lines(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(data.DataError, match="no such file"):
        data.load_episodes(str(tmp_path / "nope.jsonl"))


def test_state_longer_than_context(tmp_path):
    tok = data.byte_tokenizer()
    prompt, target = data.fwm_prompt(tok, "x" * 50, "up"), data.completion(tok, "y" * 50)
    with pytest.raises(data.DataError, match=r"f.jsonl:3: .*needs 106 tokens \(prompt 55 \+ completion 51\).*block_size is 64"):
        data.check_fits(tok, prompt, target, 64, "f.jsonl:3")
    p2, t2 = data.check_fits(tok, prompt, target, 64, "f.jsonl:3", truncate=True)
    assert len(p2) + len(t2) <= 64
    assert p2[:4] == prompt[:4] and p2[-1] == tok.next_id and t2[-1] == tok.end_id  # <|action|> up <|state|> kept
    assert p2[4:-1] == prompt[-len(p2) + 4 : -1]  # x lost its first tokens, not its last
    # the IDM's prompt also holds y: when y alone overflows the block, cutting x cannot help
    idm_p = data.idm_prompt(tok, "x" * 10, "y" * 60)
    with pytest.raises(data.DataError, match=r"f.jsonl:3: this transition needs 76 tokens and would still need 2 too many.*Fix: raise --block_size"):
        data.check_fits(tok, idm_p, data.completion(tok, "up"), 64, "f.jsonl:3", truncate=True)


def test_split_by_episode_is_disjoint_and_seeded():
    eps = [data.Episode([str(i), str(i + 1)], [None]) for i in range(10)]
    a, b, c = data.split_episodes(eps, [0.5, 0.3, 0.2], seed=1)
    assert (len(a), len(b), len(c)) == (5, 3, 2)
    ids = [e.states[0] for e in a + b + c]
    assert sorted(ids) == sorted(e.states[0] for e in eps)
    assert [e.states for e in data.split_episodes(eps, [0.5, 0.5], seed=1)[0]] == [e.states for e in a]


def test_patrolling_logs():
    """--patrol: the unlabelled and pretraining episodes come from an agent that mostly moves left or right,
    the labelled, val and test episodes from the even policy; at patrol = 0 the splits are exactly the
    episodes that one make_episodes call over all of them draws (how make_data drew them before the option)."""
    cfg, *_ = tiny_toy()
    cfg.labelled_episodes = cfg.unlabelled_episodes = cfg.test_episodes = cfg.pretrain_episodes = 40
    counts = [cfg.labelled_episodes, cfg.val_episodes, cfg.unlabelled_episodes, cfg.test_episodes,
              cfg.pretrain_episodes]
    states, actions = make_episodes(train_toy.make_world(cfg), sum(counts), 0)
    steps, start = [], 0
    for n in counts:
        steps.append([(x, a) for ep, acts in zip(states[start : start + n], actions[start : start + n])
                      for x, a in zip(ep, acts)])
        start += n
    lab, val, unl, truth, test, pretrain = train_toy.make_data(cfg, 0)
    assert [[(t.x, t.action) for t in split] for split in (lab, val, truth, test)] == steps[:4]
    assert [t.x for t in pretrain] == [x for x, _ in steps[4]]

    def along_rows(split):  # share of the steps that moved left or right, of those where one of them could
        rows = [t.action in ("left", "right") for t in split if any(step(t.x, a) != t.x for a in ("left", "right"))]
        return sum(rows) / len(rows)

    cfg.patrol = 0.9
    lab, val, unl, truth, test, pretrain = train_toy.make_data(cfg, 0)
    assert along_rows(truth) > 0.85 and along_rows(lab) < 0.7 and along_rows(test) < 0.7
    assert all(t.action is None for t in unl + pretrain)


# ----------------------------------------------------------------------------------------------------
# toy_envs/


from toy_envs import ACTIONS, GridWorld, consistent_actions, make_episodes, step  # noqa: E402
from toy_envs.gridworld import parse, render  # noqa: E402


def test_world_is_deterministic_and_seeded():
    w = GridWorld()
    assert make_episodes(w, 5, seed=3) == make_episodes(w, 5, seed=3)
    assert make_episodes(w, 5, seed=3) != make_episodes(w, 5, seed=4)
    states, actions = make_episodes(w, 5, seed=3)
    for s, a in zip(states, actions):
        assert len(s) == w.episode_len + 1 and len(a) == w.episode_len
        assert all(step(s[t], a[t]) == s[t + 1] for t in range(len(a)))  # states follow the true dynamics
        assert all(render(parse(x)) == x and x.count("A") == 1 for x in s)


def test_dynamics_by_hand():
    x = "A.o.\n.#..\n...."
    assert step(x, "right") == ".Ao.\n.#..\n...."  # walk
    assert step(step(x, "right"), "right") == "..Ao\n.#..\n...."  # push the box
    assert step("..Ao\n.#..\n....", "right") == "..Ao\n.#..\n...."  # box against the edge: blocked
    assert step(x, "up") == x and step(x, "left") == x  # off the grid: nothing changes
    assert step(".A\n.#", "down") == ".A\n.#"  # into a wall
    assert consistent_actions(x, ".Ao.\n.#..\n....") == ["right"]
    assert sorted(consistent_actions(x, x)) == ["left", "up"]  # a no-op: not identifiable
    assert set(ACTIONS) == {"up", "down", "left", "right"}


def test_two_cell_actions_by_hand():
    w = GridWorld(max_step=2)
    assert w.actions == ["up", "down", "left", "right", "up 2", "down 2", "left 2", "right 2"]
    x = "A...\n.#..\n.o.."
    assert step(x, "right 2") == step(step(x, "right"), "right") == "..A.\n.#..\n.o.."
    assert step(x, "down 2") == "....\n.#..\nAo.."  # two cells down
    assert step("A.o.\n....", "right 2") == "..Ao\n...."  # walk, then push the box
    assert step("...A\n....", "right 2") == "...A\n...."  # blocked at once: nothing changes
    assert step(".A..\n....", "left 2") == step(".A..\n....", "left")  # blocked half-way: one cell
    assert consistent_actions(".A..\n....", "A...\n....", w.actions) == ["left", "left 2"]  # not identifiable
    assert consistent_actions(x, "..A.\n.#..\n.o..", w.actions) == ["right 2"]
    states, actions = make_episodes(w, 20, seed=0)
    assert any(" 2" in a for ep in actions for a in ep)  # the policy uses them
    assert all(step(s[t], a[t]) == s[t + 1] for s, a in zip(states, actions) for t in range(len(a)))
    with pytest.raises(ValueError, match="max_step=0: it must be at least 1"):
        GridWorld(max_step=0)
    with pytest.raises(ValueError, match="patrol=1.5: it is a probability"):
        GridWorld(patrol=1.5)


from toy_envs.kitchen import Kitchen, KitchenState, all_actions, effective_actions, make_kitchen_episodes  # noqa: E402
from toy_envs.kitchen import parse as parse_kitchen  # noqa: E402
from toy_envs.kitchen import render as render_kitchen  # noqa: E402


def test_kitchen_by_hand():
    s = KitchenState(where=("table", "table", "cupboard", "fridge", "fridge", "table"), open=(False, True))
    assert render_kitchen(s) == ("the fridge is closed. in it: egg, milk.\nthe cupboard is open. in it: cup.\n"
                                 "on the table: apple, bread, plate.\nyou hold nothing.")
    moves = dict(effective_actions(s))  # the egg and the milk are in the closed fridge: out of reach
    assert set(moves) == {"open fridge", "close cupboard", "take apple", "take bread", "take cup", "take plate"}
    held = moves["take cup"]
    assert render_kitchen(held).endswith("in it: nothing.\non the table: apple, bread, plate.\nyou hold cup.")
    assert set(dict(effective_actions(held))) == {"open fridge", "close cupboard", "put cup in cupboard",
                                                  "put cup on table"}  # one object in hand; not in the fridge
    assert render_kitchen(dict(effective_actions(held))["put cup on table"]).endswith(
        "on the table: apple, bread, cup, plate.\nyou hold nothing.")
    assert len(all_actions()) == len(set(all_actions())) == 28


def test_kitchen_episodes_follow_the_rules_and_one_action_explains_each_step():
    states, actions = make_kitchen_episodes(Kitchen(), 30, seed=1)
    assert (states, actions) == make_kitchen_episodes(Kitchen(), 30, seed=1)
    assert states != make_kitchen_episodes(Kitchen(), 30, seed=2)[0]
    for ep_states, ep_actions in zip(states, actions):
        for x, a, y in zip(ep_states, ep_actions, ep_states[1:]):
            assert render_kitchen(parse_kitchen(x)) == x and a in all_actions()
            nexts = [render_kitchen(n) for _, n in effective_actions(parse_kitchen(x))]
            assert x not in nexts and len(set(nexts)) == len(nexts)  # every action changes x, each differently
            assert [b for b, n in effective_actions(parse_kitchen(x)) if render_kitchen(n) == y] == [a]


# ----------------------------------------------------------------------------------------------------
# swirl.py


import random  # noqa: E402

import swirl  # noqa: E402
import train_toy  # noqa: E402


def tiny_toy(shared=False, **over):
    cfg = train_toy.ToyConfig(size=3, n_walls=1, episode_len=3, labelled_episodes=6, val_episodes=2,
                              unlabelled_episodes=4, test_episodes=2, pretrain_episodes=0, n_layer=1, n_head=2,
                              n_embd=16)
    scfg = swirl.SwirlConfig(**{**dict(sft_max_steps=4, sft_eval_every=2, steps_per_phase=2, prompts_per_step=2,
                                        group_size=2, shared=shared, best_of="2"), **over})
    lab, val, unl, unl_truth, test, _ = train_toy.make_data(cfg, 0)
    tok = data.byte_tokenizer()
    codec = data.make_codec(tok, 48, lab, unl, shared, closed_world=True)
    new = lambda: GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16))
    return cfg, scfg, codec, new, lab, val, unl, test


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def spy_rewards(monkeypatch):
    """Record every model that swirl.mean_logprob scores with, with its weights at that moment."""
    calls = []
    real = swirl.mean_logprob

    def spy(model, *args, **kw):
        calls.append((weights(model), any(p.requires_grad for p in model.parameters())))
        return real(model, *args, **kw)

    monkeypatch.setattr(swirl, "mean_logprob", spy)
    return calls


def test_phase_fwm_reward_from_frozen_idm(monkeypatch):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(confidence=0.0)
    torch.manual_seed(0)
    fwm, idm = new(), new()
    idm_before, fwm_before = weights(idm), weights(fwm)
    calls = spy_rewards(monkeypatch)
    stats = swirl.phase_fwm(fwm, idm, swirl.frozen_copy(fwm), codec, unl, scfg, random.Random(0), torch.Generator())
    assert stats["kept_frac"] == 1.0 and "reward" in stats
    assert same(weights(idm), idm_before)  # the IDM did not move
    assert not same(weights(fwm), fwm_before)  # the FWM did
    assert calls and all(same(w, idm_before) and not grad for w, grad in calls)  # every score: frozen IDM


def test_phase_idm_reward_from_frozen_fwm(monkeypatch):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy()
    torch.manual_seed(0)
    fwm, idm = new(), new()
    idm_before, fwm_before = weights(idm), weights(fwm)
    calls = spy_rewards(monkeypatch)
    swirl.phase_idm(idm, fwm, swirl.frozen_copy(idm), codec, unl, scfg, random.Random(0), torch.Generator())
    assert same(weights(fwm), fwm_before) and not same(weights(idm), idm_before)
    assert calls and all(same(w, fwm_before) and not grad for w, grad in calls)


def test_shared_weights_reward_model_is_a_frozen_snapshot(monkeypatch):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(shared=True, confidence=0.0)
    torch.manual_seed(0)
    model = new()
    start = weights(model)
    calls = spy_rewards(monkeypatch)
    swirl.phase_fwm(model, model, swirl.frozen_copy(model), codec, unl, scfg, random.Random(0), torch.Generator())
    assert not same(weights(model), start)  # the one model learned ...
    assert all(same(w, start) and not grad for w, grad in calls)  # ... but its reward role stayed frozen


def scripted_val(scores):
    """A val_score that returns the given scores in turn and records the weights it was shown."""
    seen, it = [], iter(scores)

    def val_score(m):
        seen.append(weights(m))
        return (next(it),)

    return val_score, seen


@pytest.mark.parametrize("role", ["fwm", "idm"])
def test_each_phase_keeps_its_best_held_out_check(role):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(confidence=0.0, steps_per_phase=4, phase_eval_every=2)
    torch.manual_seed(0)
    fwm, idm = new(), new()
    model, other = (fwm, idm) if role == "fwm" else (idm, fwm)
    phase = swirl.phase_fwm if role == "fwm" else swirl.phase_idm
    for scores, kept in (([0.5, 0.9, 0.1], 1), ([0.9, 0.5, 0.1], 0)):  # checks at steps 0, 2 and 4
        val_score, seen = scripted_val(scores)
        stats = phase(model, other, swirl.frozen_copy(model), codec, unl, scfg, random.Random(0), torch.Generator(),
                      val_score=val_score)
        assert len(seen) == 3 and not same(seen[0], seen[1]) and not same(seen[1], seen[2])
        assert same(weights(model), seen[kept]) and stats["kept_step"] == 2 * kept  # 0: the phase is undone


def test_sft_continuation_keeps_its_best_check_the_start_included():
    _, scfg, codec, new, lab, *_ = tiny_toy(sft_eval_every=1)
    ex = [codec.fwm_example(t.x, t.action, t.y) for t in lab]
    torch.manual_seed(0)
    model = new()
    val_score, seen = scripted_val([0.9, 0.5, 0.2, 0.3])  # the start, then steps 1-3: the start is best
    steps, _ = swirl.sft(model, ex, val_score, scfg, random.Random(0), steps=3)
    assert steps == 3 and len(seen) == 4 and same(weights(model), seen[0]) and not same(seen[0], seen[3])
    val_score, seen = scripted_val([])  # sft_eval_every=0: no checks, the last step is kept
    swirl.sft(model, ex, val_score, swirl.replace(scfg, sft_eval_every=0), random.Random(0), steps=2)
    assert seen == []


def test_run_swirl_selects_every_phase_and_sft_continue_alike(monkeypatch):
    _, scfg, codec, new, lab, val, unl, test = tiny_toy(confidence=0.0, phase_eval_every=1, iterations=1)
    checks, starts = {}, {}
    real_sft, real_fwm, real_idm = swirl.sft, swirl.phase_fwm, swirl.phase_idm

    def record_sft(model, examples, val_score, cfg, rng, steps=None, desc="sft", keep_start=False):
        checks[desc] = cfg.sft_eval_every  # spy_sft records no period
        starts[desc] = keep_start
        return real_sft(model, examples, val_score, cfg, rng, steps, desc, keep_start)

    def spy_phase(real, role):
        def spy(*a, val_score=None, **kw):
            checks[role] = val_score is not None
            return real(*a, val_score=val_score, **kw)
        return spy

    monkeypatch.setattr(swirl, "sft", record_sft)
    monkeypatch.setattr(swirl, "phase_fwm", spy_phase(real_fwm, "fwm"))
    monkeypatch.setattr(swirl, "phase_idm", spy_phase(real_idm, "idm"))
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, log=lambda *_: None)
    assert checks["fwm"] and checks["idm"]  # both phases are given the held-out score ...
    assert checks["sft_continue FWM"] == checks["sft_continue IDM"] == 1  # ... and the control checks as often
    assert checks["sft FWM"] == checks["bootstrap IDM"] == scfg.sft_eval_every  # early stopping as before
    # the SFTs that start from the SFT models may keep them (Bootstrap, SWIRL with Bootstrap); the others
    # start from pretrained or fresh weights that no method should keep
    assert {d for d, keep in starts.items() if keep} == {"bootstrap FWM", "bootstrap IDM", "swirl+bootstrap FWM",
                                                         "swirl+bootstrap IDM"}


def test_phase_fwm_scores_an_unended_action_as_written(monkeypatch):
    """An IDM action cut at max_action_tokens (no <|end|>) is Phase I's reward target as the IDM wrote it:
    appending an <|end|> it never wrote made the IDM's prompt one token too long for the block
    (Codec.action_target; best-of-N's scores use it too)."""
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(confidence=0.0, steps_per_phase=1, prompts_per_step=1)
    cut = "updown"[: codec.max_action_tokens]  # as many tokens (bytes) as the room holds
    monkeypatch.setattr(swirl, "infer_actions", lambda idm, codec, pairs: ([cut] * len(pairs), torch.ones(len(pairs))))
    targets = []
    real = swirl.mean_logprob
    monkeypatch.setattr(swirl, "mean_logprob", lambda m, p, t, **kw: targets.append(t) or real(m, p, t, **kw))
    fwm = new()
    swirl.phase_fwm(fwm, new(), swirl.frozen_copy(fwm), codec, unl, scfg, random.Random(0), torch.Generator())
    assert targets and all(t == codec.tok.encode(cut) for t in targets[0])
    assert codec.action_target("up") == data.completion(codec.tok, "up")  # an ended action keeps its <|end|>
    # bytes that are no UTF-8 decode to U+FFFD, which encodes again as three bytes: cut to the room as well
    assert codec.tok.decode([0xE2]) == "\ufffd" and len(codec.action_target("\ufffd" * 3)) == codec.max_action_tokens


def test_confidence_filter_drops_what_it_should(monkeypatch):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(confidence=0.5)
    pairs = unl[:4]
    fake = (["up", "down", "left", "right"], torch.tensor([0.9, 0.2, 0.5, 0.49]))
    monkeypatch.setattr(swirl, "infer_actions", lambda *a: fake)
    kept, where = swirl.pseudo_label(None, codec, pairs, scfg)
    assert [(t.x, t.action) for t in kept] == [(pairs[0].x, "up"), (pairs[2].x, "left")] and where == [0, 2]
    truth = [data.with_action(p, a) for p, a in zip(pairs, ["up", "up", "down", "up"])]
    report = swirl.pseudo_label_report(kept, where, pairs, truth, scfg)  # "up" right, "left" wrong
    assert "labelled 2 of 4 unlabelled pairs" in report and "50.0% of those labels" in report
    scfg.confidence = 0.95
    stats = swirl.phase_fwm(new(), new(), None, codec, pairs, scfg, random.Random(0), torch.Generator())
    assert stats == {"pairs": 0, "kept_frac": 0.0}  # nothing confident: Phase I makes no update
    fake = (["up", "down"], torch.tensor([math.exp(-2) + 1e-4, math.exp(-2) - 1e-4]))  # the authors' threshold
    monkeypatch.setattr(swirl, "infer_actions", lambda *a: fake)
    kept, where = swirl.pseudo_label(None, codec, pairs[:2], swirl.replace(scfg, confidence=math.exp(-2)))
    assert where == [0]  # mean token log-prob just above -2 is kept, just below is dropped


def test_a_phase_that_cannot_learn_says_so(capsys):
    _, scfg, codec, new, lab, val, unl, test = tiny_toy(confidence=1.1, iterations=1, phases="fwm")
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, stop_after="swirl_it1_fwm")
    out = capsys.readouterr().out
    assert "WARNING: phase I kept no pair" in out and "--confidence=1.1" in out and "pairs=0" in out


def test_one_pass_per_phase_and_the_rate_schedule():
    _, scfg, *_ = tiny_toy(steps_per_phase=0, prompts_per_step=3, lr=1.0, lr_schedule="cosine", lr_warmup=1)
    batches = swirl.phase_batches(list(range(10)), scfg, random.Random(0))
    assert [len(b) for b in batches] == [3, 3, 3, 1] and sorted(sum(batches, [])) == list(range(10))
    opt = torch.optim.SGD(tiny_model().parameters(), lr=0.0)
    rates = []
    for step in range(1, 5):
        swirl.set_lr(opt, step, 4, scfg)
        rates.append(opt.param_groups[0]["lr"])
    # warm-up 1 step (lr * 1/2), then cosine to 0 over the remaining 3 steps: 1, cos^2 ... by hand
    assert rates == pytest.approx([0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3))])


def scripted_groups(draws, G=2):
    """A groups(batch) for swirl.groups_with_signal that rewards each draw's prompts as `draws` says, in
    turn (one reward list per prompt, G each), and records the batches it was given."""
    calls, it = [], iter(draws)

    def groups(batch):
        calls.append(list(batch))
        rewards = next(it)
        completions = [[f"{p}/{k}"] for p in batch for k in range(G)]
        return [f"prompt {p}" for p in batch], completions, torch.tensor(sum(rewards, []), dtype=torch.float32)

    return groups, calls


def test_dynamic_sampling_refills_a_batch_of_equal_groups():
    _, scfg, *_ = tiny_toy(group_size=2, max_draws=4)
    pool = list(range(100))
    # the first batch's two groups have equal rewards; the second draw brings one group with a spread,
    # the third another: the step takes those two, in the order drawn, and stops drawing
    groups, calls = scripted_groups([[[1, 1], [3, 3]], [[0, 0], [0, 1]], [[2, 5], [4, 4]]])
    prompts, completions, rewards, stats = swirl.groups_with_signal(groups, [7, 8], pool, scfg, random.Random(0))
    assert len(calls) == 3 and calls[0] == [7, 8]
    assert prompts == [f"prompt {calls[1][1]}", f"prompt {calls[2][0]}"]
    assert completions == [[f"{calls[1][1]}/0"], [f"{calls[1][1]}/1"], [f"{calls[2][0]}/0"], [f"{calls[2][0]}/1"]]
    assert rewards.tolist() == [0, 1, 2, 5]
    assert stats == {"prompts_drawn": 6, "signal_frac": 2 / 6, "capped": 0.0}
    assert grpo.has_signal(rewards, 2).all()  # every group the update sees has a signal


def test_dynamic_sampling_cap_ends_the_loop_and_fills_with_equal_groups():
    _, scfg, *_ = tiny_toy(group_size=2, max_draws=3)
    groups, calls = scripted_groups([[[1, 1], [2, 2]], [[0, 0], [5, 6]], [[3, 3], [4, 4]], [[9, 8], [7, 6]]])
    prompts, _, rewards, stats = swirl.groups_with_signal(groups, [0, 1], list(range(100)), scfg, random.Random(0))
    assert len(calls) == 3  # the cap: the fourth draw, which had a signal, is never made
    # one group with a spread (the second draw's second), filled with the first equal group drawn, in draw order
    assert prompts == ["prompt 0", f"prompt {calls[1][1]}"] and rewards.tolist() == [1, 1, 5, 6]
    assert stats == {"prompts_drawn": 6, "signal_frac": 1 / 6, "capped": 1.0}


def test_one_draw_is_plain_grpo_on_the_batch():
    _, scfg, *_ = tiny_toy(group_size=2, max_draws=1)
    groups, calls = scripted_groups([[[1, 1], [0, 2], [3, 3]]])
    prompts, completions, rewards, stats = swirl.groups_with_signal(groups, [4, 5, 6], [], scfg, random.Random(0))
    assert prompts == ["prompt 4", "prompt 5", "prompt 6"] and rewards.tolist() == [1, 1, 0, 2, 3, 3]
    assert len(completions) == 6 and stats["capped"] == 1.0 and stats["prompts_drawn"] == 3


@pytest.mark.parametrize("role", ["fwm", "idm"])
def test_each_phase_reports_its_draws_and_warns_at_the_cap(role, capsys):
    _, scfg, codec, new, lab, val, unl, test = tiny_toy(confidence=0.0, max_draws=2, phases=role, iterations=1)
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, stop_after=f"swirl_it1_{role}")
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "stats:" in l)
    drawn = float(line.split("prompts_drawn=")[1].split()[0])
    assert scfg.prompts_per_step <= drawn <= 2 * scfg.prompts_per_step and "signal_frac=" in line
    capped = float(line.split("capped=")[1].split()[0])
    assert ("--max_draws=2 batches" in out) == (capped > 0)


def test_action_stats_by_hand():
    _, _, codec, *_ = tiny_toy()
    stats = swirl.action_stats(["up", "up", "jump", "left"], codec)  # bytes: 2, 2, 4, 4 tokens
    assert stats == {"actions_distinct": 3, "action_tokens": 3.0, "actions_unseen": 0.25}


def test_references_reset_every_iteration(monkeypatch):
    _, scfg, codec, new, lab, val, unl, test = tiny_toy(iterations=2, confidence=0.0)
    seen = {"fwm": [], "idm": []}
    real_fwm, real_idm = swirl.phase_fwm, swirl.phase_idm

    def spy_fwm(fwm, idm, ref, *a, **kw):
        seen["fwm"].append((weights(ref), weights(fwm)))
        return real_fwm(fwm, idm, ref, *a, **kw)

    def spy_idm(idm, fwm, ref, *a, **kw):
        seen["idm"].append((weights(ref), weights(idm)))
        return real_idm(idm, fwm, ref, *a, **kw)

    monkeypatch.setattr(swirl, "phase_fwm", spy_fwm)
    monkeypatch.setattr(swirl, "phase_idm", spy_idm)
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, log=lambda *_: None)
    for role in ("fwm", "idm"):
        (ref1, start1), (ref2, start2) = seen[role]
        assert same(ref1, start1) and same(ref2, start2)  # the reference is the model at iteration start
        assert not same(ref1, ref2)  # ... and it moved on between iterations


def test_sft_trains_only_the_target_tokens():
    _, scfg, codec, new, lab, *_ = tiny_toy()
    torch.manual_seed(0)
    model = new()
    ex = [codec.fwm_example(t.x, t.action, t.y) for t in lab[:3]]
    loss = swirl.sft_loss(model, ex)
    by_hand = []
    for p, t in ex:  # oracle: slow per-token log-probs of the target, averaged over all target tokens
        by_hand += slow_logprobs(model, p + t, len(p))
    assert loss.item() == pytest.approx(-sum(by_hand) / len(by_hand), abs=1e-5)


def test_early_stopping_may_keep_the_start(capsys):
    """keep_start (Bootstrap's SFT): the weights SFT started from are a candidate; where no step beats
    them they come back, and patience counts from them."""
    _, scfg, codec, new, lab, *_ = tiny_toy()
    scfg = swirl.replace(scfg, sft_max_steps=20, sft_eval_every=1, sft_patience=2)
    ex = [codec.fwm_example(t.x, t.action, t.y) for t in lab]
    torch.manual_seed(0)
    model = new()
    start = weights(model)
    val_score, seen = scripted_val([0.9, 0.5, 0.4, 0.95])  # the start, then two checks without a gain
    steps, _ = swirl.sft(model, ex, val_score, scfg, random.Random(0), keep_start=True)
    assert steps == 2 and len(seen) == 3 and same(seen[0], start) and same(weights(model), start)
    assert "stopped at step 2 by early stopping; kept step 0" in capsys.readouterr().out
    val_score, seen = scripted_val([0.5, 0.4, 0.3, 0.2])  # without it the start is never scored
    swirl.sft(model, ex, val_score, scfg, random.Random(0))
    assert not same(weights(model), start) and same(weights(model), seen[0])


def test_swirl_with_bootstrap_starts_from_swirls_models_and_labels(monkeypatch):
    """The swirl+bootstrap row: Bootstrap's SFT started from SWIRL's final models (those run_swirl returns)
    and on their IDM's labels, where the bootstrap row starts from the SFT models (as saved in sft.pt)."""
    cfg, scfg, codec, new, lab, val, unl, test = tiny_toy(confidence=0.0, iterations=1)
    labellers, starts = [], {}
    real_label, real_warm = swirl.pseudo_label, swirl.warm_start
    monkeypatch.setattr(swirl, "pseudo_label", lambda idm, *a: labellers.append(weights(idm)) or real_label(idm, *a))

    def spy_warm(fwm, idm, *a, desc="sft", **kw):
        starts[desc] = (weights(fwm), weights(idm))
        return real_warm(fwm, idm, *a, desc=desc, **kw)

    monkeypatch.setattr(swirl, "warm_start", spy_warm)
    saved = {}
    stages, (fwm, idm) = swirl.run_swirl(scfg, codec, new, lab, val, unl, test, log=lambda *_: None,
                                         checkpoint=lambda name, run, _: saved.setdefault(name, copy_models(run)))
    assert [s["stage"] for s in stages][-2:] == ["best_of_2", "swirl+bootstrap"]
    sft_fwm, sft_idm = saved["sft"]
    assert len(labellers) == 2 and same(labellers[0], sft_idm) and same(labellers[1], weights(idm))
    assert same(starts["bootstrap"][0], sft_fwm) and same(starts["bootstrap"][1], sft_idm)
    assert same(starts["swirl+bootstrap"][0], weights(fwm)) and same(starts["swirl+bootstrap"][1], weights(idm))
    assert not same(weights(fwm), sft_fwm) and not same(weights(idm), sft_idm)  # both phases moved their model
    stages, _ = swirl.run_swirl(swirl.replace(scfg, iterations=0), codec, new, lab, val, unl, test,
                                log=lambda *_: None)
    assert "swirl+bootstrap" not in [s["stage"] for s in stages]  # no SWIRL: it would be Bootstrap again


def copy_models(run):
    return weights(run.sft_models[0]), weights(run.sft_models[1])


def test_sft_early_stopping_keeps_the_best_weights_and_says_what_ended_it(capsys):
    _, scfg, codec, new, lab, *_ = tiny_toy()
    scfg = swirl.replace(scfg, sft_max_steps=20, sft_eval_every=1, sft_patience=2)
    ex = [codec.fwm_example(t.x, t.action, t.y) for t in lab]
    torch.manual_seed(0)
    model, seen = new(), []
    scores = iter([(0.1,), (0.5,), (0.4,), (0.3,), (0.9,)])  # best at step 2, then two checks without a gain

    def val_score(m):
        seen.append(weights(m))
        return next(scores)

    steps, _ = swirl.sft(model, ex, val_score, scfg, random.Random(0))
    assert steps == 4 and len(seen) == 4  # stopped after sft_patience checks without improvement
    assert same(weights(model), seen[1]) and not same(seen[1], seen[3])  # and restored step 2's weights
    assert "stopped at step 4 by early stopping; kept step 2" in capsys.readouterr().out
    rising = iter([(float(i),) for i in range(20)])  # never stops improving: the cap ends it, and says so
    steps, _ = swirl.sft(new(), ex, lambda m: next(rising), swirl.replace(scfg, sft_max_steps=3), random.Random(0))
    assert steps == 3 and "stopped at step 3 by the step cap (--sft_max_steps" in capsys.readouterr().out


def spy_sft(monkeypatch):
    """Record (desc, examples, peak lr, steps) of every swirl.sft call, then run it."""
    calls = []
    real = swirl.sft

    def spy(model, examples, val_score, cfg, rng, steps=None, desc="sft", keep_start=False):
        calls.append((desc, examples, cfg.sft_lr, steps))
        return real(model, examples, val_score, cfg, rng, steps, desc, keep_start)

    monkeypatch.setattr(swirl, "sft", spy)
    return calls


def test_pretraining_sees_states_and_labelled_words_only(monkeypatch):
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(pretrain_steps=3)
    calls = spy_sft(monkeypatch)
    swirl.pretrain_fwm(new(), codec, lab, unl, scfg, random.Random(0))
    ((desc, examples, lr, steps),) = calls
    assert (desc, lr, steps) == ("pretrain FWM", scfg.sft_lr, 3)
    assert len(examples) == 4 * len(unl)  # swirl.PRETRAIN_WORDS_PER_PAIR words per pair
    words = {t.action for t in lab}
    for (prompt, target), t in zip(examples, [t for t in unl for _ in range(4)]):
        assert target == data.completion(codec.tok, t.y)  # the real next state is the target ...
        assert any(prompt == codec.fwm_example(t.x, w)[0] for w in words)  # ... the action a labelled word


def test_pretraining_corpus_of_its_own(monkeypatch):
    """--pretrain_episodes draws extra episodes after the others: the four splits stay as they were, the
    corpus shares no episode with them, and run_swirl pretrains on it instead of the unlabelled pairs."""
    cfg, scfg, codec, new, lab, val, unl, test = tiny_toy(pretrain_steps=1)
    before = train_toy.make_data(cfg, 0)
    cfg.pretrain_episodes = 3
    after = train_toy.make_data(cfg, 0)
    assert before[:5] == after[:5] and before[5] == [] and len(after[5]) == 3 * cfg.episode_len
    corpus = after[5]
    assert not {t.source for t in corpus} & {t.source for split in after[:5] for t in split}  # "toy episode i"
    assert all(t.action is None for t in corpus)
    seen = []
    monkeypatch.setattr(swirl, "pretrain_fwm", lambda fwm, codec, labelled, pairs, cfg, rng, renamer: seen.append(pairs))
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, pretrain_pairs=corpus, stop_after="sft", log=lambda *a: None)
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, stop_after="sft", log=lambda *a: None)
    assert seen == [corpus, unl]


def test_renamed_pairs_rename_alike_and_keep_the_layout():
    x, y, z = "a red door.\n\ta table", "a red door.\n\tthe table", "open red door"
    words = ["cat", "dog", "owl"]
    assert data.renamed((x, y), words, 0.0, random.Random(0)) == (x, y)
    rx, ry, rz = data.renamed((x, y, z), words, 1.0, random.Random(0))
    for text, new in ((x, rx), (y, ry), (z, rz)):
        assert re.sub(r"\S+", "w", new) == re.sub(r"\S+", "w", text)
    assert set(rx.split()) | set(ry.split()) | set(rz.split()) <= set(words)
    names = dict(zip(x.split(), rx.split()))
    for text, new in ((y, ry), (z, rz)):  # one renaming for every text
        assert all(names.get(w, r) == r for w, r in zip(text.split(), new.split()))
    assert data.renamed((x, y), words, 0.5, random.Random(3)) == data.renamed((x, y), words, 0.5, random.Random(3))


def test_renamed_words_get_random_endings():
    """endings: about ENDING_P of the new words get one, any ending after any word (so an ending cannot be
    guessed from the word before it), alike in every text; word_endings are the tokens that continue a word."""
    x = " ".join(f"w{i}" for i in range(400))
    words, endings = ["cat", "dog", "owl"], ["ar", "um", "ge"]
    rx, ry = data.renamed((x, x), words, 1.0, random.Random(0), endings)
    assert rx == ry
    new = rx.split()
    assert all(w in words or (w[:3] in words and w[3:] in endings) for w in new)
    ended = [w for w in new if w not in words]
    assert abs(len(ended) / len(new) - data.ENDING_P) < 0.06 and {(w[:3], w[3:]) for w in ended} == \
        {(w, e) for w in words for e in endings}
    assert data.word_endings(data.byte_tokenizer()) == [chr(c) for c in range(33, 127)]
    states = ["This room is called the kitchen. In it, you see:\n\ta fridge\n\ta peach\n\ta plate"] * 20
    tok = data.bpe_tokenizer(states, 400)
    pieces = [tok.decode([i]) for i in tok.encode(" tortoise platinum")]
    inner = [p for p in pieces if not p.startswith(" ")]
    assert inner and set(inner) <= set(data.word_endings(tok))  # the held-out words' inner pieces
    assert not any(c.isspace() for e in data.word_endings(tok) for c in e)


def test_spelled_words_spell_every_printable_token():
    """By hand for bytes: one word per printable non-space ASCII character. On a BPE trained on a few
    states, a held-out word is written with tokens no training state uses; the spelled words show them."""
    assert data.spelled_words(data.byte_tokenizer()) == [chr(c) for c in range(33, 127)]
    states = ["This room is called the kitchen. In it, you see:\n\ta fridge\n\ta peach\n\ta plate"] * 20
    tok = data.bpe_tokenizer(states, 400)
    seen = {i for s in states for i in tok.encode(s)}
    held_out = "\n\ta tortoise\n\ta platinum plate"
    unseen = set(tok.encode(held_out)) - seen
    assert unseen  # the trained BPE makes the held-out words of pieces the training states never use
    words = data.spelled_words(tok)
    shown = {i for w in words for i in tok.encode(" " + w) + tok.encode("\t" + w + "\n")}
    assert unseen <= shown and not any(c.isspace() for w in words for c in w)
    pool = data.renaming_words(tok, [data.Transition(states[0], states[0], "look", 0)])
    assert pool[:4] == ["In", "This", "a", "called"] and pool[-len(words):] == words


def test_pretraining_on_renamed_pairs(monkeypatch):
    """rename > 0: every pretraining example is its pair renamed (a new renaming each), with words
    drawn from the pairs' own states and spelled_words (data.renaming_words), at the configured probability."""
    _, scfg, codec, new, lab, val, unl, _ = tiny_toy(pretrain_steps=1)
    calls = spy_sft(monkeypatch)
    seen = []

    def fake_renamed(texts, words, p, rng, endings=()):
        seen.append((texts, p, set(words)))
        assert endings == data.word_endings(codec.tok)
        return tuple(text.lower() for text in texts)

    monkeypatch.setattr(data, "renamed", fake_renamed)
    swirl.pretrain_fwm(new(), codec, lab, unl, scfg, random.Random(0), data.Renamer(codec.tok, 0.5))
    ((_, examples, _, _),) = calls
    pairs = [t for t in unl for _ in range(swirl.PRETRAIN_WORDS_PER_PAIR)]
    assert [texts for texts, _, _ in seen] == [(t.x, t.y) for t in pairs]
    assert {p for _, p, _ in seen} == {0.5} and seen[0][2] == set(data.renaming_words(codec.tok, unl))
    assert [target for _, target in examples] == [data.completion(codec.tok, t.y.lower()) for t in pairs]


def test_sft_adds_renamed_triples_to_the_fwm_only(monkeypatch):
    """rename > 0: the FWM's SFT sees every labelled triple, then each once more renamed alike in x, y and
    the action; the IDM's SFT sees the real triples only. rename = 0 adds nothing."""
    _, scfg, codec, new, lab, val, _, _ = tiny_toy()
    words, endings = data.renaming_words(codec.tok, lab), data.word_endings(codec.tok)
    copies = data.Renamer(codec.tok, 1.0).copies(lab, random.Random(0))
    assert [(c.episode, c.source) for c in copies] == [(t.episode, f"{t.source} (renamed, --rename)") for t in lab]
    assert [data.renamed((t.x, t.y, t.action), words, 1.0, random.Random(0), endings) for t in lab[:1]] == \
        [(copies[0].x, copies[0].y, copies[0].action)]
    expected = {1.0: [codec.fwm_example(c.x, c.action, c.y) for c in copies], 0.0: []}
    for p in (1.0, 0.0):
        calls = spy_sft(monkeypatch)
        renamer = data.Renamer(codec.tok, p) if p else None
        swirl.warm_start(new(), new(), codec, lab, val, scfg, random.Random(0), steps=1, renamer=renamer)
        (_, fwm_ex, _, _), (_, idm_ex, _, _) = calls
        assert fwm_ex == [codec.fwm_example(t.x, t.action, t.y) for t in lab] + expected[p]
        assert idm_ex == [codec.idm_example(t.x, t.y, t.action) for t in lab]


def test_the_idm_has_a_step_cap_of_its_own():
    """idm_sft_max_steps > 0: the IDM's SFT runs to that cap and the FWM's to sft_max_steps (no checks here,
    so each runs to its cap); 0: sft_max_steps for both."""
    _, scfg, codec, new, lab, val, _, _ = tiny_toy()
    scfg = swirl.replace(scfg, sft_max_steps=2, sft_eval_every=0)
    for idm_cap, total in ((3, 2 + 3), (0, 2 + 2)):
        cfg = swirl.replace(scfg, idm_sft_max_steps=idm_cap)
        assert swirl.warm_start(new(), new(), codec, lab, val, cfg, random.Random(0))[0] == total


def test_idm_from_pretrained_starts_the_idm_from_the_pretrained_fwm(monkeypatch):
    """idm_from_pretrained: the IDM's SFT (and the oracle's, from the same start) begins at the pretrained
    FWM's weights; without it the IDM begins at a fresh initialisation, unlike the FWM's."""
    starts = {}
    real_warm = swirl.warm_start

    def spy_warm(fwm, idm, *a, desc="sft", **kw):
        starts[desc] = (weights(fwm), weights(idm))
        return real_warm(fwm, idm, *a, desc=desc, **kw)

    monkeypatch.setattr(swirl, "warm_start", spy_warm)
    for flag in (True, False):
        _, scfg, codec, new, lab, val, unl, test = tiny_toy(pretrain_steps=2, idm_from_pretrained=flag)
        starts.clear()
        swirl.run_swirl(scfg, codec, new, lab, val, unl, test, unlabelled_truth=lab, log=lambda *_: None)
        for stage in ("sft", "oracle"):
            fwm_start, idm_start = starts[stage]
            assert same(fwm_start, idm_start) == flag, (stage, flag)


def test_pretrained_fwm_is_fine_tuned_gently_everywhere(monkeypatch):
    _, scfg, codec, new, lab, val, unl, test = tiny_toy(pretrain_steps=2, finetune_lr=1e-4, confidence=0.0)
    calls = spy_sft(monkeypatch)
    seen = {}
    real_warm = swirl.warm_start

    def spy_warm(fwm, idm, *a, desc="sft", **kw):  # the weights each SFT of the FWM starts from
        seen[desc] = weights(fwm)
        return real_warm(fwm, idm, *a, desc=desc, **kw)

    monkeypatch.setattr(swirl, "warm_start", spy_warm)
    swirl.run_swirl(scfg, codec, new, lab, val, unl, test, unlabelled_truth=lab, log=lambda *_: None)
    lrs = {desc: lr for desc, _, lr, _ in calls}
    assert calls[0][0] == "pretrain FWM" and lrs["pretrain FWM"] == scfg.sft_lr
    for stage in ("sft", "bootstrap", "oracle"):
        assert lrs[stage + " FWM"] == 1e-4 and lrs[stage + " IDM"] == scfg.sft_lr  # the IDM is not pretrained
    assert lrs["sft_continue FWM"] == lrs["sft_continue IDM"] == scfg.lr  # SWIRL's rate, as in its phases
    torch.manual_seed(0)  # as run_swirl does before it builds its models
    untrained = weights(new())
    assert same(seen["oracle"], seen["sft"]) and not same(seen["sft"], untrained)  # both start pretrained


def test_parse_options_rejects_unknown_and_converts():
    cfg, scfg = train_toy.ToyConfig(), swirl.SwirlConfig()
    common.parse_options(["--seeds=3", "--beta=0.5", "--shared=true", "--phases=fwm"], cfg, scfg, scfg.grpo)
    assert (cfg.seeds, scfg.grpo.beta, scfg.shared, scfg.phases) == (3, 0.5, True, "fwm")
    with pytest.raises(SystemExit, match="unknown option --grpo"):  # a nested config is not an option ...
        common.parse_options(["--grpo=1"], scfg, scfg.grpo)  # ... its fields are
    with pytest.raises(SystemExit, match="unknown option --betta"):
        common.parse_options(["--betta=1"], scfg)
    with pytest.raises(SystemExit, match="not a int"):
        common.parse_options(["--seeds=two"], cfg)
    with pytest.raises(SystemExit, match="--phase_eval_every: '-1'; it counts something"):
        common.parse_options(["--phase_eval_every=-1"], scfg)  # not a run that checks at every step
    common.parse_options(["--phase_eval_every=0", "--reward_floor=-5"], scfg)  # 0 and negative floats are fine
    assert (scfg.phase_eval_every, scfg.reward_floor) == (0, -5.0)
    with pytest.raises(SystemExit, match="--key=value"):
        common.parse_options(["seeds"], cfg)
    for key in ("seeds", "max_draws"):
        with pytest.raises(SystemExit, match=f"--{key}: '0'; it must be 1 or more"):
            common.parse_options([f"--{key}=0"], cfg, scfg)
    with pytest.raises(SystemExit, match="--rename: '1.5'; it is a probability"):
        common.parse_options(["--rename=1.5"], train_llm.LLMConfig())
    with pytest.raises(SystemExit, match="error: patrol=2.0: it is a probability"):
        train_toy.main(["--patrol=2"])  # a bad world option: one line, before any training


def test_mean_over_seeds_and_table():
    runs = [[{"stage": "sft", "fwm_exact": 0.2}], [{"stage": "sft", "fwm_exact": 0.4}]]
    (row,) = common.mean_over_seeds(runs)
    assert row["fwm_exact"] == pytest.approx(0.3) and row["fwm_exact_std"] == pytest.approx(0.1414, abs=1e-4)
    assert "0.300 ± 0.141" in common.format_table([row], ["fwm_exact"])


def test_t_critical_against_published_values():
    # two-sided 95% critical values of Student's t, from any statistics table
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (1000, 1.962)]:
        assert common.t_critical(df) == pytest.approx(t, abs=1e-3)


def test_paired_gain_by_hand():
    # gains 0.01..0.05: mean 0.03, sample sd sqrt(0.00025) = 0.015811, se 0.0070711, t(4) = 2.776445,
    # half-width 0.019632: the interval [0.010368, 0.049632]; every seed gains
    runs = [[{"stage": "sft", "m": 0.5}, {"stage": "a", "m": 0.5 + g}] for g in (0.01, 0.02, 0.03, 0.04, 0.05)]
    g = common.paired_gain(runs, "a", "m")
    assert (g["mean"], g["lo"], g["hi"]) == pytest.approx((0.03, 0.010368, 0.049632), abs=1e-6)
    assert (g["wins"], g["ties"], g["n"]) == (5, 0, 5)
    runs = [[{"stage": "sft", "m": 0.5}, {"stage": "a", "m": v}] for v in (0.4, 0.5, 0.7)]  # -0.1, 0, +0.2
    g = common.paired_gain(runs, "a", "m")
    # mean 1/30; sd = sqrt(((-0.1333)^2 + (-0.0333)^2 + 0.1667^2) / 2) = 0.152753; t(2) = 4.302653
    assert (g["lo"], g["hi"]) == pytest.approx((1 / 30 - 4.302653 * 0.152753 / 3 ** 0.5,
                                                1 / 30 + 4.302653 * 0.152753 / 3 ** 0.5), abs=1e-5)
    assert (g["wins"], g["ties"]) == (1, 1)
    one = common.paired_gain(runs[:1], "a", "m")
    assert one["lo"] is None and one["mean"] == pytest.approx(-0.1)  # one seed: no interval
    table, out = common.paired_table(runs, ["a"], ["m"])
    assert "| a | +3.3 [-34.6, +41.3], 1/3 up (1 tied) |" in table and out["a"]["m"]["n"] == 3


def test_combined_row_against_its_parts_by_hand():
    # per seed (sft, swirl_it2_idm, bootstrap, swirl+bootstrap): the combined row minus SWIRL's last stage is
    # +0.1, +0.2, +0.3 (mean 0.2, sd 0.1, t(2) 4.302653: [0.2 -+ 0.248414]); minus Bootstrap 0, -0.1, +0.1
    values = [(0.5, 0.6, 0.7, 0.7), (0.4, 0.5, 0.8, 0.7), (0.3, 0.4, 0.6, 0.7)]
    names = ["sft", "swirl_it2_idm", "bootstrap", "swirl+bootstrap"]
    # an earlier SWIRL stage (swirl_it1_idm) is not one of the parts
    runs = [[{"stage": "swirl_it1_idm", "m": 0.0}] + [{"stage": n, "m": v} for n, v in zip(names, row)]
            for row in values]
    table, gains = common.combined_against_parts(runs, runs[0], ["m"])
    assert set(gains) == {"swirl_it2_idm", "bootstrap"}
    g = gains["swirl_it2_idm"]["m"]
    assert (g["mean"], g["lo"], g["hi"], g["wins"]) == pytest.approx((0.2, 0.2 - 0.248414, 0.2 + 0.248414, 3), abs=1e-5)
    assert gains["bootstrap"]["m"]["gains"] == pytest.approx([0.0, -0.1, 0.1])
    assert "| swirl_it2_idm | +20.0 [-4.8, +44.8], 3/3 up |" in table and "| bootstrap | " in table
    assert common.combined_against_parts(runs, runs[0][:-1], ["m"]) == (None, None)  # no combined row


def test_bench_toy_parts_add_up(tmp_path):
    import bench

    wall, times = bench.toy_parts([
        "--size=3", "--n_walls=1", "--episode_len=3", "--labelled_episodes=6", "--val_episodes=2",
        "--unlabelled_episodes=4", "--test_episodes=2", "--n_layer=1", "--n_head=2", "--n_embd=16",
        "--sft_max_steps=4", "--sft_eval_every=2", "--steps_per_phase=2", "--prompts_per_step=2", "--group_size=2",
        "--iterations=1", "--confidence=0.0", "--pretrain_steps=3", f"--out_dir={tmp_path}"])
    outers = {o for o, i in times if i == "all"}
    assert {"pretraining", "SFT: sft", "SFT: bootstrap", "SFT: oracle", "SFT: swirl+bootstrap", "phase I", "phase II",
            "evaluation"} <= outers
    assert times[("evaluation", "all")][1] == 10  # sft, two phases, bootstrap, sft_continue, best_of_2/4/8, oracle,
    # swirl+bootstrap
    for (outer, inner), (seconds, calls) in times.items():
        if inner != "all":
            assert outer in outers and calls >= 1
    for outer in outers:  # inner parts are counted once each, inside their outer part
        assert sum(s for (o, i), (s, _) in times.items() if o == outer and i != "all") <= times[(outer, "all")][0]
    assert sum(times[(o, "all")][0] for o in outers) <= wall
    assert swirl.phase_fwm.__name__ == "phase_fwm" and swirl.BestWeights.check.__name__ == "check"  # unpatched


def test_seeds_give_the_same_numbers_alone_or_side_by_side(tmp_path):
    args = ["--size=3", "--n_walls=1", "--episode_len=3", "--labelled_episodes=6", "--val_episodes=2",
            "--unlabelled_episodes=4", "--test_episodes=2", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--sft_max_steps=4", "--sft_eval_every=2", "--steps_per_phase=2", "--prompts_per_step=2",
            "--group_size=2", "--iterations=1", "--seeds=2", "--confidence=0.0", "--pretrain_steps=3",
            "--samples=0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker in this process, or two processes: one thread a seed either way
    try:
        train_toy.main(args + ["--workers=1", f"--out_dir={tmp_path / 'alone'}"])
        train_toy.main(args + ["--workers=2", f"--out_dir={tmp_path / 'side'}"])
    finally:
        torch.set_num_threads(threads)
    alone, side = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("alone", "side"))
    assert [s["threads"] for s in alone["seeds"]] == [s["threads"] for s in side["seeds"]] == [1, 1]
    assert [s["stages"] for s in alone["seeds"]] == [s["stages"] for s in side["seeds"]]
    assert (tmp_path / "side" / "seed1" / "log.txt").read_text().startswith("seed 1:")


def test_stop_after_keeps_swirls_rows_and_rejects_unknown_stages(tmp_path):
    args = ["--size=3", "--n_walls=1", "--episode_len=3", "--labelled_episodes=6", "--val_episodes=2",
            "--unlabelled_episodes=4", "--test_episodes=2", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--sft_max_steps=4", "--sft_eval_every=2", "--steps_per_phase=2", "--prompts_per_step=2",
            "--group_size=2", "--iterations=1", "--seeds=2", "--workers=1", "--confidence=0.0",
            "--pretrain_steps=3", "--samples=0"]
    train_toy.main(args + [f"--out_dir={tmp_path / 'all'}"])
    train_toy.main(args + ["--stop_after=swirl_it1_idm", f"--out_dir={tmp_path / 'cut'}"])
    full, cut = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("all", "cut"))
    for whole, part in zip(full["seeds"], cut["seeds"]):  # the oracle: the same seeds run to the end
        assert [s["stage"] for s in part["stages"]] == ["sft", "swirl_it1_fwm", "swirl_it1_idm"]
        assert part["stages"] == whole["stages"][:3]
    assert set(cut["paired"]) == {"swirl_it1_idm"} and "combined" not in cut  # SWIRL's last stage against SFT
    for stage in ("bootstrap", "swirl_it2_fwm"):  # a baseline, and a phase this run does not have
        with pytest.raises(SystemExit, match=f"--stop_after={stage} names no stage of this run. Fix: one of sft, "
                                             "swirl_it1_fwm, swirl_it1_idm"):
            train_toy.main(args + [f"--stop_after={stage}", f"--out_dir={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit, match="--stop_after=sft_ names no stage"):
        train_llm.main(["--data=missing.jsonl", "--stop_after=sft_"])  # before the data is read
    assert not (tmp_path / "bad").exists()


def test_cell_accuracy_by_hand():
    assert train_toy.cell_accuracy(["ab\ncd", "x"], ["ab\ncc", "xy"])["fwm_cell_acc"] == pytest.approx(5 / 7)


def test_error_kinds_by_hand():
    real = "#A.\n.o.\n..."
    cases = {
        real: None,
        "#A.\n.o.\n..#": "fwm_err_copy",  # only a floor cell wrong
        "#A.\n..o\n...": "fwm_err_box",  # agent right, box in another cell
        "#.A\n.o.\n...": "fwm_err_agent",  # agent in another cell (outranks the box)
        "#.A\n..o\n...": "fwm_err_agent",
        "#AA\n.o.\n...": "fwm_err_malformed",  # two agents
        "#A.\n.o.\n..": "fwm_err_malformed",  # a cell missing
    }
    for predicted, kind in cases.items():
        assert train_toy.error_kind(predicted, real) == kind, predicted
    m = train_toy.toy_metrics(list(cases), [real] * len(cases))
    assert m["fwm_err_agent"] == pytest.approx(2 / 7) and m["fwm_err_copy"] == pytest.approx(1 / 7)
    assert sum(m[k] for k in train_toy.ERROR_KINDS) == pytest.approx(6 / 7)  # all but the right one


def test_train_toy_tiny_two_iterations_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    train_toy.main([
        f"--out_dir={out}", "--size=3", "--n_walls=1", "--episode_len=3", "--labelled_episodes=6",
        "--val_episodes=2", "--unlabelled_episodes=4", "--test_episodes=2", "--n_layer=1", "--n_head=2",
        "--n_embd=16", "--sft_max_steps=4", "--sft_eval_every=2", "--steps_per_phase=2", "--prompts_per_step=2",
        "--group_size=2", "--iterations=2", "--seeds=2", "--confidence=0.0", "--pretrain_steps=3",
        "--pretrain_episodes=3",
    ])
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"config", "wall_seconds", "stages", "seeds", "paired", "combined"}
    assert res["config"]["seeds"] == 2
    assert set(res["combined"]) == {"swirl_it2_idm", "bootstrap"}
    assert [s["seed"] for s in res["seeds"]] == [0, 1] and set(res["paired"]) >= {"swirl_it2_idm", "bootstrap"}
    assert res["config"]["lr"] == train_toy.TOY_SWIRL["lr"]  # the toy's defaults reach the run, options win
    assert res["config"]["pretrain_steps"] == 3 != train_toy.TOY_SWIRL["pretrain_steps"]
    names = [s["stage"] for s in res["stages"]]
    assert names == ["sft", "swirl_it1_fwm", "swirl_it1_idm", "swirl_it2_fwm", "swirl_it2_idm", "bootstrap",
                     "sft_continue", "best_of_2", "best_of_4", "best_of_8", "oracle", "swirl+bootstrap"]
    for s in res["stages"]:
        for m in train_toy.METRICS:
            assert 0 <= s[m] <= 1 and s[m + "_std"] >= 0
        # every held-out prediction is right or wrong in exactly one way (means over seeds keep the sum)
        assert s["fwm_exact"] + sum(s[k] for k in train_toy.ERROR_KINDS) == pytest.approx(1)
    assert (out / "seed0" / "sft.pt").exists() and (out / "seed1" / "swirl_it2_idm.pt").exists()
    out = capsys.readouterr().out
    assert "| stage |" in out and "| gain over sft (points) |" in out


# ----------------------------------------------------------------------------------------------------
# The text path: ScienceWorld preparation (with a fake environment: no Java), the snapshot, train_llm.py

import importlib.util  # noqa: E402
import os  # noqa: E402

import bench  # noqa: E402
import train_llm  # noqa: E402

# data/scienceworld/prepare.py is a script run by its path (as nanoGPT's data/*/prepare.py are); load it so
_spec = importlib.util.spec_from_file_location(
    "prepare", os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "scienceworld", "prepare.py"))
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)


def test_bleu_by_hand():
    # clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    want = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert train_llm.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(want)
    assert train_llm.bleu(["a b c d"], ["a b c d"]) == pytest.approx(1.0)
    assert train_llm.bleu(["the cat"], ["the cat sat on"], max_n=2) == pytest.approx(math.exp(1 - 4 / 2))  # brevity
    assert train_llm.bleu(["x y z w"], ["a b c d"]) == 0.0 and train_llm.bleu([""], ["a"]) == 0.0


def test_rouge_l_by_hand():
    assert train_llm.lcs_length("abcd", "acde") == 3
    assert train_llm.rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)  # LCS 3: P = R = 3/4
    assert train_llm.rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)  # mean of 1 and 0


class FakeScienceWorld:
    """Just the calls data/scienceworld/prepare.py makes, on a world of rooms where gold paths walk."""

    def __init__(self, fail_after=None):
        self.loads, self.fail_after = 0, fail_after

    def get_task_names(self):
        return ["boil", "melt"]

    def get_variations_train(self):
        return [0, 1, 2, 3, 4]

    def get_variations_test(self):
        return [7, 8]

    def load(self, task, variation, simplifications, generateGoldPath=False):
        if generateGoldPath:
            self.loads += 1
            if self.fail_after is not None and self.loads > self.fail_after:
                raise KeyboardInterrupt  # an interrupted preparation
        self.task, self.variation = task, variation

    def _info(self):
        return {"look": f"This room is room {self.room}. ({self.task} {self.variation}) \n", "inv": "In your inventory: a pen\n"}

    def reset(self):
        self.room = 0
        return "obs", self._info()

    def get_gold_action_sequence(self):
        return ["go to room 1", "go to room 2", "go to room 3"]

    def step(self, action):
        self.room = int(action.split()[-1])
        return "obs", 0, self.room == 3, self._info()


def test_scienceworld_preparation_with_a_fake_env(tmp_path):
    cfg = prepare.ScienceWorldPrep(out=str(tmp_path / "sw"), train_variations=4, test_variations=1, max_steps=2)
    summary = prepare.prepare(cfg, FakeScienceWorld())
    train = data.load_episodes(str(tmp_path / "sw" / "train.jsonl.gz"))
    test = data.load_episodes(str(tmp_path / "sw" / "test.jsonl.gz"))
    assert (len(train), len(test)) == (8, 2) and summary["labelled"] == 4
    assert sum(all(a is None for a in e.actions) for e in train) == 4  # half the training variations stripped
    assert all(e.actions == ["go to room 1", "go to room 2"] for e in test)  # max_steps cuts the gold path
    assert train[0].states[1] == "This room is room 1. (boil 0)\nIn your inventory: a pen"  # look + "\n" + inventory
    assert not (tmp_path / "sw" / "partial.jsonl").exists()


def test_scienceworld_preparation_resumes(tmp_path):
    cfg = prepare.ScienceWorldPrep(out=str(tmp_path / "sw"), train_variations=2, test_variations=1)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(cfg, FakeScienceWorld(fail_after=3))
    assert not (tmp_path / "sw" / "train.jsonl.gz").exists()  # nothing half-written
    env = FakeScienceWorld()
    prepare.prepare(cfg, env)
    assert env.loads == 6 - 3  # the three finished episodes were not played again
    assert len(data.load_episodes(str(tmp_path / "sw" / "train.jsonl.gz"))) == 4


def test_scienceworld_preparation_names_its_files(tmp_path):
    cfg = prepare.ScienceWorldPrep(out=str(tmp_path), train_variations=2, test_variations=1, name="large")
    prepare.prepare(cfg, FakeScienceWorld())
    assert sorted(os.listdir(tmp_path)) == ["test_large.jsonl.gz", "train_large.jsonl.gz"]  # no partial_large left


def test_scienceworld_unknown_task_is_a_clear_error(tmp_path):
    cfg = prepare.ScienceWorldPrep(out=str(tmp_path / "sw"), tasks="boil,fly")
    with pytest.raises(data.DataError, match=r"unknown ScienceWorld task\(s\) \['fly'\]"):
        prepare.prepare(cfg, FakeScienceWorld())


@pytest.mark.parametrize("world", ["gridworld", "kitchen"])
def test_simulated_worlds_as_jsonl(tmp_path, world):
    spec = importlib.util.spec_from_file_location(f"{world}_prepare", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "data", world, "prepare.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    options = prep.GridPrep if world == "gridworld" else prep.KitchenPrep
    cfg = options(out=str(tmp_path), labelled_episodes=3, unlabelled_episodes=5, val_episodes=1, test_episodes=2)
    assert prep.prepare(cfg) == (8, 1, 2)
    train, val, test = (data.load_episodes(str(tmp_path / f)) for f in ("train.jsonl.gz", "val.jsonl.gz",
                                                                          "test.jsonl.gz"))
    labelled, unlabelled = data.labelled_and_unlabelled(data.transitions(train))
    assert (len(labelled), len(unlabelled)) == (3 * 8, 5 * 8) and all(a for e in val + test for a in e.actions)
    # the world's own episodes, the same stream: the toy's 4x4 grid, or the kitchen
    states, actions = (make_episodes(GridWorld(4, 3, 1, 8), 11, seed=0) if world == "gridworld"
                       else make_kitchen_episodes(Kitchen(), 11, seed=0))
    assert [e.states for e in train + val + test] == states
    assert train[0].actions == actions[0] and train[3].actions == [None] * 8 and val[0].actions == actions[8]
    assert test[1].actions == actions[10]
    os.remove(tmp_path / "val.jsonl.gz")  # without validation episodes, no val file (train_llm.py holds some out)
    assert prep.prepare(options(out=str(tmp_path), val_episodes=0, test_episodes=2)) == (240, 0, 2)
    assert not os.path.exists(tmp_path / "val.jsonl.gz")


@pytest.mark.parametrize("name, episodes", [("", (120, 60)), ("_large", (898, 227))])
def test_shipped_scienceworld_data_loads_and_splits(name, episodes):
    """Both shipped sets: the small snapshot (the CPU preset's) and the large one (the GPU preset's): whole
    episodes alternately labelled and state-only, every test action given, and a BPE cache that matches the
    data, so that a first run trains no tokenizer and writes nothing into the repository."""
    train = data.load_episodes(f"data/scienceworld/train{name}.jsonl.gz")
    test = data.load_episodes(f"data/scienceworld/test{name}.jsonl.gz")
    assert (len(train), len(test)) == episodes
    labelled = [all(a is not None for a in e.actions) for e in train]
    assert sum(labelled) == len(train) // 2 and all(lab or not any(e.actions) for lab, e in zip(labelled, train))
    assert all(a is not None for e in test for a in e.actions)
    assert all("In your inventory" in s for e in train[:5] for s in e.states)
    cfg, _ = train_llm.configure([f"--data=data/scienceworld/train{name}.jsonl.gz"])
    assert cfg.eval_data == f"data/scienceworld/test{name}.jsonl.gz"
    labelled, val, unlabelled, held_out = train_llm.load_data(cfg)
    assert len(held_out) == sum(len(e.actions) for e in test)
    before = set(os.listdir("data/scienceworld"))
    train_llm.make_tokenizer(cfg, labelled + val + unlabelled)
    assert set(os.listdir("data/scienceworld")) == before


def test_presets_read_their_scienceworld_set_and_its_test_file(tmp_path):
    """The GPU preset's default data is the large set, the CPU preset's the small snapshot; --eval_data=auto
    finds test* beside train*, and holds out part of --data when there is no such file or name."""
    cfg, _ = train_llm.configure([])
    large = ("data/scienceworld/train_large.jsonl.gz", "data/scienceworld/test_large.jsonl.gz")
    assert (cfg.data, cfg.eval_data) == large
    cfg, _ = train_llm.configure(["--preset=cpu"])
    assert (cfg.data, cfg.eval_data) == ("data/scienceworld/train.jsonl.gz", "data/scienceworld/test.jsonl.gz")
    (tmp_path / "train_mine.jsonl").write_text("")
    (tmp_path / "test_mine.jsonl").write_text("")
    (tmp_path / "mine.jsonl").write_text("")
    assert train_llm.beside("auto", str(tmp_path / "train_mine.jsonl"), "test") == str(tmp_path / "test_mine.jsonl")
    assert train_llm.beside("auto", str(tmp_path / "train_mine.jsonl"), "val") == ""  # no val_mine.jsonl
    assert train_llm.beside("auto", str(tmp_path / "mine.jsonl"), "test") == ""  # not named train*
    assert train_llm.beside("auto", str(tmp_path / "train.jsonl"), "test") == ""  # no test.jsonl beside it
    assert train_llm.beside("other.jsonl", str(tmp_path / "train_mine.jsonl"), "test") == "other.jsonl"
    cfg, _ = train_llm.configure([f"--data={tmp_path / 'mine.jsonl'}", "--preset=cpu"])
    assert cfg.eval_data == ""  # a user's own file is never scored on ScienceWorld's test set



def tiny_text_data(tmp_path):
    """Gridworld episodes as text JSONL (bench.tiny_text_data writes them: half with actions, half without,
    and a gzipped test file), with a tiny run's options."""
    return bench.tiny_text_data(str(tmp_path)) + ["--sft_max_steps=4", "--sft_eval_every=2", "--iterations=2",
                                                  "--steps_per_phase=2", "--samples=1"]


def test_train_llm_tiny_run_writes_results(tmp_path, capsys):
    args = tiny_text_data(tmp_path)
    train_llm.main(args + [f"--out_dir={tmp_path / 'run'}"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res) == {"config", "wall_seconds", "stages", "floors"}
    assert set(res["floors"]) == {"y=x", "majority"} and 0 <= res["floors"]["y=x"]["fwm_exact"] <= 1
    assert [s["stage"] for s in res["stages"]] == ["sft", "swirl_it1_fwm", "swirl_it1_idm", "swirl_it2_fwm",
                                                   "swirl_it2_idm", "bootstrap", "sft_continue", "best_of_2",
                                                   "swirl+bootstrap"]
    for s in res["stages"]:
        assert all(0 <= s[m] <= 1 for m in train_llm.METRICS)
    ckpt = load_checkpoint(str(tmp_path / "run" / "swirl_it1_idm.pt"))
    assert {"fwm", "idm", "optimizers", "config", "stage", "step", "rng", "generator", "torch_rng"} <= set(ckpt)
    out = capsys.readouterr().out
    assert "IDM's action" in out and "fwm_bleu" in out


def test_the_toy_through_train_llm_gives_the_toys_numbers(tmp_path):
    """One world, one answer: a toy seed exported (train_toy.py --export) and run by train_llm.py, under either
    preset, is the toy's own run: the same weights after SFT and after every phase, the same FWM metrics on
    every stage the toy has too. The IDM's accuracy differs by design (the toy counts only the transitions one
    action explains), and so would swirl+bootstrap (after the toy's oracle, which draws from the same stream)."""
    toy = ["--size=3", "--n_walls=1", "--episode_len=3", "--labelled_episodes=6", "--val_episodes=3",
           "--unlabelled_episodes=6", "--test_episodes=3", "--n_layer=1", "--n_head=2", "--n_embd=16",
           "--sft_max_steps=60", "--sft_eval_every=10", "--sft_patience=2", "--steps_per_phase=4",
           "--phase_eval_every=0", "--prompts_per_step=2", "--group_size=4", "--pretrain_steps=60",
           "--iterations=1", "--max_draws=2", "--best_of=2", "--samples=0", "--seeds=2", "--confidence=0.0",
           "--workers=1"]  # in this process, on as many threads as train_llm.py below: one float order
    train_toy.main(toy + [f"--out_dir={tmp_path / 'toy'}"])
    train_toy.main(toy + [f"--export={tmp_path / 'split'}"])
    recipe = (tmp_path / "split" / "seed1" / "recipe.txt").read_text()
    assert "--seed=1\n" in recipe and "--temperature=1.5\n" in recipe and "--beta=1.0\n" in recipe
    toy_res = json.loads((tmp_path / "toy" / "results.json").read_text())["seeds"][1]["stages"]
    for preset in ("gpu", "cpu"):
        out = tmp_path / f"text-{preset}"
        train_llm.main([f"--data={tmp_path / 'split' / 'seed1' / 'train.jsonl.gz'}", f"--preset={preset}",
                        f"--out_dir={out}", "--samples=0"])
        res = json.loads((out / "results.json").read_text())
        assert res["config"]["val_data"].endswith("val.jsonl.gz")
        assert res["config"]["eval_data"].endswith("test.jsonl.gz")
        text = {s["stage"]: s for s in res["stages"]}
        names = [s["stage"] for s in toy_res if s["stage"] not in ("oracle", "swirl+bootstrap")]
        assert names == [n for n in text if n != "swirl+bootstrap"]
        for s in toy_res:
            if s["stage"] in names:
                assert (s["fwm_exact"], s["fwm_exact_inferred"]) == (text[s["stage"]]["fwm_exact"],
                                                                     text[s["stage"]]["fwm_exact_inferred"])
        for stage in ("sft", "swirl_it1_fwm", "swirl_it1_idm"):
            a = load_checkpoint(str(tmp_path / "toy" / "seed1" / f"{stage}.pt"))
            b = load_checkpoint(str(out / f"{stage}.pt"))
            for role in ("fwm", "idm"):
                assert a[role]["config"] == b[role]["config"]
                assert all(torch.equal(a[role]["weights"][k], v) for k, v in b[role]["weights"].items()), (stage, role)
    sft, last = (load_checkpoint(str(tmp_path / "toy" / "seed1" / f"{s}.pt"))["fwm"]["weights"]
                 for s in ("sft", "swirl_it1_idm"))
    assert not all(torch.equal(sft[k], v) for k, v in last.items())  # the phases changed it


def test_val_data_is_read_beside_train_and_needs_every_action(tmp_path):
    """--val_data=auto reads val* beside train*; its episodes are the validation split, none of --data's
    labelled ones is held out for it, and a val episode without its actions is one error naming the line."""
    train_toy.main(["--export=" + str(tmp_path), "--labelled_episodes=5", "--val_episodes=2",
                    "--unlabelled_episodes=3", "--test_episodes=2"])
    folder = tmp_path / "seed0"
    cfg, _ = train_llm.configure([f"--data={folder / 'train.jsonl.gz'}"])
    assert cfg.val_data == str(folder / "val.jsonl.gz")
    labelled, val, unlabelled, test = train_llm.load_data(cfg)
    assert (len(labelled), len(val), len(unlabelled), len(test)) == (5 * 8, 2 * 8, 3 * 8, 2 * 8)
    cfg, _ = train_llm.configure([f"--data={folder / 'train.jsonl.gz'}", "--val_data=", "--val_fraction=0.2"])
    labelled, val, _, _ = train_llm.load_data(cfg)
    assert (len(labelled), len(val)) == (4 * 8, 1 * 8)  # a fifth of the 5 labelled episodes held out
    (tmp_path / "val_bad.jsonl").write_text(json.dumps({"states": ["a", "b", "c"], "actions": ["x", None]}) + "\n")
    cfg, _ = train_llm.configure([f"--data={folder / 'train.jsonl.gz'}", f"--val_data={tmp_path / 'val_bad.jsonl'}"])
    with pytest.raises(data.DataError, match=r"val_bad.jsonl:1: --val_data episodes need every action"):
        train_llm.load_data(cfg)


def test_train_llm_seeds_are_a_paired_experiment(tmp_path, capsys):
    """--seeds=2: each seed's stages as a run of that seed alone gives them, the gains over SFT computed
    from them, and --resume reads finished seeds instead of training them again."""
    args = tiny_text_data(tmp_path) + ["--samples=0", "--iterations=1"]
    train_llm.main(args + [f"--out_dir={tmp_path / 'alone'}", "--seed=1"])
    train_llm.main(args + [f"--out_dir={tmp_path / 'both'}", "--seeds=2"])
    res = json.loads((tmp_path / "both" / "results.json").read_text())
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert [r["seed"] for r in res["seeds"]] == [0, 1] and res["seeds"][1]["stages"] == alone["stages"]
    by_seed = [{s["stage"]: s for s in r["stages"]} for r in res["seeds"]]
    gain = res["paired"]["bootstrap"]["fwm_exact"]
    assert gain["gains"] == [b["bootstrap"]["fwm_exact"] - b["sft"]["fwm_exact"] for b in by_seed]
    assert set(res["paired"]) == {"swirl_it1_idm", "bootstrap", "sft_continue", "best_of_2", "swirl+bootstrap"}
    out = capsys.readouterr().out
    assert "each method against SFT on the same seed" in out and "swirl+bootstrap against each method" in out
    assert set(res["combined"]) == {"swirl_it1_idm", "bootstrap"}
    train_llm.main(args + [f"--out_dir={tmp_path / 'both'}", "--seeds=2", "--resume=true"])
    assert capsys.readouterr().out.count("done before") == 2
    assert json.loads((tmp_path / "both" / "results.json").read_text())["paired"] == res["paired"]


def test_bpe_cache_is_shared_across_seeds_and_never_overwritten(tmp_path):
    def tokenizer_files(extra):
        cfg, _ = train_llm.configure(tiny_text_data(tmp_path) + extra)
        labelled, val, unlabelled, _ = train_llm.load_data(cfg)
        train_llm.make_tokenizer(cfg, labelled + val + unlabelled)
        return sorted(p.name for p in tmp_path.glob("bpe*.txt"))

    # with --eval_data the corpus is the whole --data file, whatever the seed: one cache
    assert len(tokenizer_files(["--seed=0"])) == 1 and len(tokenizer_files(["--seed=1"])) == 1
    # without it, the held-out episodes depend on the seed; each split gets its own file beside the first
    first = tokenizer_files([])
    assert len(tokenizer_files(["--eval_data=", "--seed=3"])) == 2 and set(first) <= set(tokenizer_files([]))


def test_every_held_out_state_and_action_can_be_written():
    """The text path's masks allow all text: every state and action of the shipped test split, and a state
    of words no training state has, can be written by its role (under the trained BPE, which makes each
    training word one token, unseen words need sub-word tokens that never occurred in training)."""
    cfg, scfg = train_llm.configure([])
    labelled, val, unlabelled, test = train_llm.load_data(cfg)
    tok = train_llm.make_tokenizer(cfg, labelled + val + unlabelled)
    codec = data.make_codec(tok, cfg.block_size, labelled, unlabelled)
    unseen = "A zebra quietly juggles xylophones."
    for texts, allowed in (([t.x for t in test] + [t.y for t in test] + [unseen], codec.state_ids),
                           ([t.action for t in test] + [unseen], codec.action_ids)):
        assert all(bool(allowed[tok.encode(s)].all()) for s in texts)
    assert not codec.state_ids[[tok.state_id, tok.next_id, tok.pad_id, tok.fwm_id, tok.idm_id]].any()
    assert codec.state_ids[tok.end_id] and codec.action_ids[tok.end_id]


def test_state_slot_of_the_shipped_snapshot_fits():
    """--state_slot=true: the slot is the longest training state, and every held-out transition still fits
    in the default context (the IDM's x in its slot, then y, then the action)."""
    cfg, scfg = train_llm.configure(["--state_slot=true"])
    labelled, val, unlabelled, test = train_llm.load_data(cfg)
    tok = train_llm.make_tokenizer(cfg, labelled + val + unlabelled)
    codec = data.make_codec(tok, cfg.block_size, labelled, unlabelled, state_slot=cfg.state_slot)
    longest = max(len(tok.encode(s)) for t in labelled + unlabelled for s in (t.x, t.y))
    assert codec.state_slot == codec.max_state_tokens - 1 == longest
    for t in test:
        prompt, target = codec.fwm_example(t.x, t.action, t.y)
        assert target == data.completion(tok, t.y) and len(prompt) == len(tok.encode(t.action)) + codec.state_slot + 3
        assert codec.idm_example(t.x, t.y, t.action)[1] == data.completion(tok, t.action)


def test_copy_baseline_hand_computed():
    # y = x is right on the first pair and shares no word with the real y on the second. BLEU over the
    # corpus: n-gram matches 4/6, 3/4, 2/2, 1/1, equal lengths -> (4/6 * 3/4) ** (1/4) = 0.5 ** 0.25
    test = [data.Transition("a b c d", "a b c d", "z", 0), data.Transition("p q", "r s", "z", 0)]
    expected = {"fwm_exact": 0.5, "fwm_bleu": 0.5 ** 0.25, "fwm_rougeL": 0.5}
    assert train_llm.copy_baseline(test) == pytest.approx(expected)


def test_majority_baseline_hand_computed():
    # "go" is the labelled steps' most common action; it is the answer on 1 of the 4 test steps
    labelled = [data.Transition("s", "t", a, 0) for a in ["go", "go", "take", "look"]]
    test = [data.Transition("s", "t", a, 0) for a in ["take", "go", "look", "look"]]
    assert train_llm.majority_baseline(labelled, test) == {"idm_action_acc": 0.25, "action": "go"}
    floors = {"y=x": {"fwm_exact": 0.5}, "majority": train_llm.majority_baseline(labelled, test)}
    assert train_llm.floors_line(floors).endswith("y = x fwm_exact=0.500; the IDM writing the majority action "
                                                  "idm_action_acc=0.250 (always 'go')")


def test_train_llm_resume_reaches_the_same_result(tmp_path):
    args = tiny_text_data(tmp_path) + ["--samples=0"]
    train_llm.main(args + [f"--out_dir={tmp_path / 'whole'}"])
    train_llm.main(args + [f"--out_dir={tmp_path / 'cut'}", "--stop_after=swirl_it1_fwm"])
    assert len(json.loads((tmp_path / "cut" / "results.json").read_text())["stages"]) == 2  # interrupted
    train_llm.main(args + [f"--out_dir={tmp_path / 'cut'}", "--resume=True"])
    whole, cut = (json.loads((tmp_path / d / "results.json").read_text())["stages"] for d in ("whole", "cut"))
    assert whole == cut
    a, b = (load_checkpoint(str(tmp_path / d / "resume.pt"))["models"] for d in ("whole", "cut"))
    for role in ("fwm", "idm"):
        assert all(torch.equal(a[role][k], b[role][k]) for k in a[role])  # bit-identical final weights


def test_bf16_autocast_learns_as_float32_does():
    """train_llm.py runs everything inside the autocast context setup_devices returns. A weight's bf16 copy
    must follow the optimiser: 30 SFT steps in bf16 end where float32 ends (with autocast's weight cache
    over the whole run, they ended near the start), and a forward pass after the steps equals one in a
    fresh context (the oracle: no stale copy can be left in a context entered afterwards)."""
    _, scfg, codec, _, lab, _, _, _ = tiny_toy(sft_warmup=1, sft_lr=3e-3, sft_batch=8)
    examples = [codec.fwm_example(t.x, t.action, t.y) for t in lab][:8]

    def train(dtype):
        _, _, autocast = train_llm.setup_devices(train_llm.LLMConfig(device="cpu", dtype=dtype))
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=codec.tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=64))
        with autocast:
            start = swirl.sft_loss(model, examples).item()
            swirl.sft(model, examples, None, scfg, random.Random(0), steps=30)
            end = swirl.sft_loss(model, examples).item()
            logits = model(torch.tensor([examples[0][0]]))
        with train_llm.setup_devices(train_llm.LLMConfig(device="cpu", dtype=dtype))[2]:
            fresh = model(torch.tensor([examples[0][0]]))
        assert torch.equal(logits, fresh)
        return start, end

    (start32, end32), (start16, end16) = train("float32"), train("bfloat16")
    assert end32 < 0.4 * start32  # the oracle learns
    assert abs(end16 - end32) < 0.1 * start32  # bf16 learns as much (it stayed at 0.9 x start with the cache)


def test_train_llm_bad_options_and_files(tmp_path):
    args = tiny_text_data(tmp_path)
    with pytest.raises(SystemExit, match="unknown option --n_layers"):
        train_llm.main(args + ["--n_layers=2"])
    with pytest.raises(SystemExit, match="unknown --preset=tpu"):
        train_llm.main(args + ["--preset=tpu"])
    with pytest.raises(SystemExit, match="does not exist"):
        train_llm.main(args + [f"--out_dir={tmp_path / 'none'}", "--resume=True"])
    write_lines(tmp_path / "bad.jsonl", ['{"states": ["a", "b"], "actions": ["x"]}', '{"states": ["a"]}'])
    with pytest.raises(data.DataError, match=r"bad.jsonl:2: an episode needs at least two states"):
        train_llm.main(args + [f"--data={tmp_path / 'bad.jsonl'}"])
    write_lines(tmp_path / "nolabels.jsonl", ['{"states": ["a", "b"]}'])
    with pytest.raises(data.DataError, match="no step has an action"):
        train_llm.main(args + [f"--data={tmp_path / 'nolabels.jsonl'}"])
    with pytest.raises(data.DataError, match="need every action"):
        train_llm.main(args + [f"--eval_data={tmp_path / 'train.jsonl'}"])


def test_a_recipe_is_applied_to_its_own_data_only_and_the_command_line_wins(tmp_path):
    """A recipe.txt beside --data sets its options after the preset ([cpu] lines under --preset=cpu only);
    data in another folder does not get it; --recipe= turns it off; an explicit option wins over it."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir(), other.mkdir()
    args_mine, args_other = bench.tiny_text_data(str(mine)), bench.tiny_text_data(str(other))
    (mine / "recipe.txt").write_text("# a comment\n--temperature=0.5   # a comment after a setting\n--rope=true\n\n[cpu]\n--sft_batch=5\n"
                                     "[gpu]\n--sft_batch=7\n")
    cfg, scfg = train_llm.configure(args_mine)  # bench's options hold --preset=cpu
    assert (scfg.temperature, cfg.rope, scfg.sft_batch, cfg.recipe) == (0.5, True, 5, str(mine / "recipe.txt"))
    cfg, scfg = train_llm.configure(args_mine + ["--preset=gpu"])
    assert (scfg.temperature, scfg.sft_batch) == (0.5, 7)
    preset = train_llm.PRESETS["cpu"]
    for args in (args_other, args_mine + ["--recipe="]):
        cfg, scfg = train_llm.configure(args)
        assert (scfg.temperature, cfg.rope, scfg.sft_batch, cfg.recipe) == (preset["temperature"], False,
                                                                           preset["sft_batch"], "")
    cfg, scfg = train_llm.configure(args_mine + ["--temperature=0.9", "--rope=false"])
    assert (scfg.temperature, cfg.rope, scfg.sft_batch) == (0.9, False, 5)
    cfg, scfg = train_llm.configure(args_other + [f"--recipe={mine / 'recipe.txt'}"])  # anyone's recipe, by name
    assert scfg.temperature == 0.5


def test_a_bad_recipe_is_one_error_naming_the_file_and_line(tmp_path):
    args = bench.tiny_text_data(str(tmp_path))
    recipe = tmp_path / "recipe.txt"
    for text, line, what in (("--group_size=3\n--group_sise=4\n", 2, "'--group_sise=4' is not a setting"),
                             ("--rename=2\n", 1, "it is a probability"),
                             ("[tpu]\n", 1, r"\[tpu\] names no preset"),
                             ("--rope=true\n[cpu\n", 2, r"\[cpu names no preset"),  # no closing bracket
                             ("--out_dir=elsewhere\n", 1, "is not a setting a recipe can hold"),
                             ("rope=true\n", 1, "is not a setting")):
        recipe.write_text(text)
        with pytest.raises(data.DataError, match=rf"recipe.txt, line {line}: .*{what}"):
            train_llm.configure(args)
    with pytest.raises(SystemExit, match=r"error: --recipe=.*nothere.txt: no such file"):
        train_llm.cli(args + [f"--recipe={tmp_path / 'nothere.txt'}"])


def test_scienceworld_recipe_gives_the_cpu_preset_its_measured_settings():
    """python train_llm.py --preset=cpu reads data/scienceworld/recipe.txt: the settings that were the CPU
    preset's before recipes (measured on this data) are all there; the GPU preset gets the same data settings
    but not the CPU step caps."""
    cfg, scfg = train_llm.configure(["--preset=cpu"])
    assert cfg.recipe == os.path.join("data", "scienceworld", "recipe.txt")
    assert (cfg.rename, cfg.state_slot, cfg.rope, scfg.idm_from_pretrained, cfg.block_size) == (0.5, True, True,
                                                                                                  True, 1280)
    assert (scfg.sft_max_steps, scfg.idm_sft_max_steps) == (250, 500)
    cfg, scfg = train_llm.configure([])
    assert (cfg.rename, cfg.state_slot, cfg.rope, scfg.idm_from_pretrained) == (0.5, True, True, True)
    assert (scfg.sft_max_steps, scfg.idm_sft_max_steps) == (train_llm.PRESETS["gpu"]["sft_max_steps"], 0)
    for preset in train_llm.PRESETS.values():  # no preset carries a data set's trick
        assert not {"rename", "state_slot", "rope", "idm_sft_max_steps"} & set(preset)


def _grad_worker(rank, path, result):
    """One of two processes: gradient of its half of a batch, averaged over both by all_reduce_grads."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    model = tiny_model()
    x = torch.arange(24).view(4, 6) % 40
    model(x[2 * rank : 2 * rank + 2])[..., 0].sum().backward()
    common.all_reduce_grads(model)
    torch.save([p.grad for p in model.parameters()], f"{result}.{rank}")
    torch.distributed.destroy_process_group()


def test_all_reduce_grads_equals_the_full_batch_gradient(tmp_path):
    torch.multiprocessing.spawn(_grad_worker, args=(str(tmp_path / "pg"), str(tmp_path / "g")), nprocs=2)
    model = tiny_model()
    x = torch.arange(24).view(4, 6) % 40
    (model(x)[..., 0].sum() / 2).backward()  # oracle: one process, the whole batch (the mean of the halves)
    for rank in (0, 1):
        for g, p in zip(torch.load(tmp_path / f"g.{rank}"), model.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# A pretrained start (--init_from): our safetensors reader and GPT-2 loader against transformers' GPT-2


from model import WeightsError, gpt2_from_folder, read_safetensors  # noqa: E402


def classic_bytes_to_unicode():
    """GPT-2's own byte -> character table (as in its encoder.py), written independently of data.py."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# a small BPE of its own, in GPT-2's file format: 256 byte tokens, these merges (ids 256...), <|endoftext|>
SMALL_MERGES = [("h", "e"), ("t", "he"), ("Ġ", "the"), ("o", "o"), ("r", "oo"), ("roo", "m"), ("Ġ", "room")]
SMALL_VOCAB = 256 + len(SMALL_MERGES) + 1


def write_gpt2_tokenizer(folder):
    chars = classic_bytes_to_unicode()
    vocab = {chars[b]: i for i, b in enumerate(chars)}  # GPT-2 numbers the bytes in this table's order
    for i, (a, b) in enumerate(SMALL_MERGES):
        vocab[a + b] = 256 + i
    vocab["<|endoftext|>"] = SMALL_VOCAB - 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in SMALL_MERGES))


def saved_gpt2(folder, n_positions=64):
    """A random transformers GPT2LMHeadModel with the small vocabulary, saved as Hugging Face saves GPT-2."""
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle (a test-only dependency)")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=SMALL_VOCAB, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder.mkdir(exist_ok=True)
    hf.save_pretrained(folder)
    write_gpt2_tokenizer(folder)
    return hf


def test_safetensors_reader_by_hand(tmp_path):
    a = torch.arange(6, dtype=torch.float32).view(2, 3)
    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]}, "__metadata__": {"format": "pt"}}
    head = json.dumps(header).encode()
    raw = len(head).to_bytes(8, "little") + head + a.numpy().tobytes() + b.view(torch.int16).numpy().tobytes()
    (tmp_path / "w.safetensors").write_bytes(raw)
    got = read_safetensors(str(tmp_path / "w.safetensors"))
    assert set(got) == {"a", "b"} and torch.equal(got["a"], a) and torch.equal(got["b"], b)
    (tmp_path / "cut.safetensors").write_bytes(raw[:-3])
    with pytest.raises(WeightsError, match=r"cut.safetensors: truncated"):
        read_safetensors(str(tmp_path / "cut.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        read_safetensors(str(tmp_path / "junk.safetensors"))


def test_gpt2_loader_equals_transformers_with_padding(tmp_path):
    hf = saved_gpt2(tmp_path / "gpt2")
    model = gpt2_from_folder(str(tmp_path / "gpt2"), vocab_size=SMALL_VOCAB).eval()
    rows = [[5, 9, 200, 31, 7, 260], [40, 41, 42]]
    ids, attn, _ = data.collate(rows, pad_id=0)  # left-padded, as every batch here is
    with torch.no_grad():
        ours = model(ids, attn)  # (2, 6, V)
        for r, row in enumerate(rows):  # the oracle: transformers on each row alone, unpadded
            theirs = hf(torch.tensor([row])).logits[0]
            assert torch.allclose(ours[r, -len(row):], theirs, atol=1e-4), r


def test_added_token_rows_change_no_ordinary_logit(tmp_path):
    saved_gpt2(tmp_path / "gpt2")
    exact = gpt2_from_folder(str(tmp_path / "gpt2"), vocab_size=SMALL_VOCAB).eval()
    padded = gpt2_from_folder(str(tmp_path / "gpt2"), vocab_size=320).eval()  # our specials, then padding to 64s
    x = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.allclose(padded(x)[..., :SMALL_VOCAB], exact(x), atol=1e-5)
    assert torch.allclose(padded.wte.weight[SMALL_VOCAB:], exact.wte.weight.mean(0).expand(320 - SMALL_VOCAB, -1))


def test_gpt2_tokenizer_from_files_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers' GPT-2 tokenizer is the oracle")
    write_gpt2_tokenizer(tmp_path)
    tok = data.gpt2_tokenizer(str(tmp_path))
    theirs = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in ["the room", "The  rooms\nthere, 3 rooms!", "héllo wörld"]:
        assert tok.encode(text) == theirs.encode(text) and tok.decode(tok.encode(text)) == text
    assert min(tok.special_ids) == SMALL_VOCAB and tok.n_text == SMALL_VOCAB - 1  # <|endoftext|> keeps its id
    (tmp_path / "merges.txt").write_text("#version: 0.2\no o\nh e\n")  # merges out of order with vocab.json
    with pytest.raises(data.DataError, match=r"merges.txt:2: merge 'o' \+ 'o' is not token 256"):
        data.gpt2_tokenizer(str(tmp_path))


def test_train_llm_from_a_saved_gpt2(tmp_path):
    saved_gpt2(tmp_path / "gpt2", n_positions=96)
    args = tiny_text_data(tmp_path) + ["--samples=0", "--iterations=1", f"--init_from={tmp_path / 'gpt2'}"]
    train_llm.main(args + [f"--out_dir={tmp_path / 'run'}"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [s["stage"] for s in res["stages"]] == ["sft", "swirl_it1_fwm", "swirl_it1_idm", "bootstrap",
                                                   "sft_continue", "best_of_2", "swirl+bootstrap"]
    assert res["config"]["sft_lr"] == train_llm.FROM_PRETRAINED["sft_lr"]  # a pretrained start fine-tunes
    ckpt = load_checkpoint(str(tmp_path / "run" / "sft.pt"))
    assert ckpt["fwm"]["config"]["vocab_size"] == 320 and ckpt["fwm"]["config"]["gelu"] == "tanh"


def test_pretrained_start_errors(tmp_path, monkeypatch):
    args = tiny_text_data(tmp_path) + [f"--cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit, match="--init_from=nowhere: neither scratch"):
        train_llm.cli(args + ["--init_from=nowhere"])

    def offline(*a, **kw):
        raise train_llm.urllib.error.URLError("no network")

    monkeypatch.setattr(train_llm.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit, match=r"could not download .*gpt2/resolve/main/config.json .*put config.json, "
                                         r"model.safetensors, vocab.json, merges.txt of that model in .*cache/gpt2"):
        train_llm.cli(args + ["--init_from=gpt2"])
    folder = tmp_path / "notgpt2"
    folder.mkdir()
    with pytest.raises(SystemExit, match=r"notgpt2/vocab.json: no such file"):  # not a download: a folder was given
        train_llm.cli(args + [f"--init_from={folder}"])
    write_gpt2_tokenizer(folder)
    with pytest.raises(SystemExit, match=r"--rope=true is for a model from scratch"):  # GPT-2 has learned positions
        train_llm.cli(args + [f"--init_from={folder}", "--rope=true"])
    with pytest.raises(SystemExit, match=r"notgpt2/config.json: no such file"):
        train_llm.cli(args + [f"--init_from={folder}", "--preset=cpu"])  # the preset's rope gives way
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))  # no sizes
    with pytest.raises(SystemExit, match=r"config.json: not a GPT-2 config .*sizes \['n_layer'\]"):
        train_llm.cli(args + [f"--init_from={folder}"])
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "n_positions": 64}))
    with pytest.raises(SystemExit, match=r"config.json: not a GPT-2 config \(model_type 'llama'"):
        train_llm.cli(args + [f"--init_from={folder}"])
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64, "n_layer": 1,
                                                    "n_head": 2, "n_embd": 32}))
    with pytest.raises(SystemExit, match=r"model.safetensors: no such file"):
        train_llm.cli(args + [f"--init_from={folder}"])



# ----------------------------------------------------------------------------------------------------
# Speed: the copies keep torch.compile, and bench.py's GPU check runs (at toy sizes, on this CPU)


from model import copy_model  # noqa: E402


def test_copies_of_a_compiled_model_are_compiled_again(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    model = tiny_model().compile_forward()
    ref = swirl.frozen_copy(model)  # a reference or reward model, as each phase makes
    fwm, idm = swirl.copy_pair(model, tiny_model())
    assert [m for m, _ in compiled] == [model, ref, fwm] and all(kw == {"dynamic": True} for _, kw in compiled)
    assert copy_model(tiny_model()) is not None and len(compiled) == 3  # an eager model stays eager


def test_gpu_check_runs_at_toy_sizes_on_the_cpu(tmp_path, capsys):
    figures = bench.gpu_check(torch.device("cpu"), small=True, out_dir=str(tmp_path))
    out = capsys.readouterr().out
    for line in ("device: cpu", "attention, causal with no mask:", "SFT:", "decode:", "GRPO step, phase I (FWM):",
                 "GRPO step, phase II (IDM):", "SFT loss on held-out transitions:", "train_llm.py --device=cpu",
                 "after SFT, held out: FWM ROUGE-L", "after SFT, held out: IDM"):
        assert line in out, line
    assert "FAIL" not in out and figures["run"]["finite"]
    start, end = figures["run"]["sft_loss"]
    assert end < start and figures["sft_tokens_per_s"] > 0 and figures["decode_tokens_per_s"] > 0
    assert set(figures["run"]["floors"]) == {"y=x", "majority"} and figures["run"]["sft"]["stage"] == "sft"
    for phase in ("phase I (FWM)", "phase II (IDM)"):
        assert set(figures[phase]) == {"sampling", "reward", "reference", "policy"}
