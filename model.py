"""
model.py: the small GPT that plays both roles of SWIRL.

Both of the paper's models are autoregressive language models over the same token ids:
  - the forward world model (FWM)  P_theta(y | x, z): reads state x and action z, writes next state y;
  - the inverse dynamics model (IDM) Q_phi(z | x, y): reads x and y, writes the action z.
This file knows nothing about states or actions: it is a nanoGPT-style decoder plus the three things
SWIRL asks of a language model:
  1. span_logprobs: log p(token_t | tokens_<t) for the completion tokens only, at a given temperature
     (SFT, both rewards and GRPO all use it);
  2. generate: batched sampling with a KV cache, temperature / top-k / top-p, an optional set of
     allowed token ids (the paper's logit masks), per-row stop at an end token;
  3. checkpoint helpers that write atomically;
  4. gpt2_from_folder: GPT-2's pretrained weights (Hugging Face's config.json + model.safetensors),
     read by our own few-dozen-line reader of the safetensors format, into this GPT.

Padding. Sequences in one batch have different lengths. Where only log-probs are needed (SFT, rewards,
GRPO's update) they are padded on the RIGHT and need no mask at all: attention is causal, so no real
token ever sees a pad after it, and the pads' own outputs are never used; attention then runs as one
causal kernel (the fast one on a GPU). Generation pads prompts on the LEFT, so that every prompt ends in
the same column, and carries an attention mask (1 = real token). Two details make left padding invisible:
  - positions are counted over real tokens only (cumsum of the mask), so a row's first real token is
    at position 0 whatever its padding;
  - attention never looks at a pad key. A pad query would then see no key at all (softmax over
    nothing = NaN), so each pad query may look at itself; its output is never used.

Read next: grpo.py (the RL update), then data.py (text -> tensors), then swirl.py (the algorithm).
"""

import copy
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 512
    block_size: int = 256  # longest sequence (prompt + completion) the model can read
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # keep 0 for GRPO: the ratio new/old must compare the same function
    bias: bool = False
    gelu: str = "none"  # F.gelu's approximation: "none" (exact) or "tanh" (GPT-2's)
    # positions: False = a learned embedding per position, added to the tokens (GPT-2's; pretrained weights
    # need it); True = rotary (RoPE, Su et al. 2021): queries and keys turned by an angle per position, so
    # attention sees only how far apart two tokens are. A copy of x at a fixed distance is then one rule
    # for every position, where learned positions must line each position up with the one that far back.
    rope: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        assert not cfg.rope or (cfg.n_embd // cfg.n_head) % 2 == 0, "rope turns pairs: the head size must be even"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, allowed, cache=None, angles=None):
        """x: (B, T, C) new tokens; allowed: (B, 1, T, S) bool, True where query t may see key s
        (None = plain causal); cache: a LayerCache holding the S - T earlier keys and values;
        angles: the rotary (cos, sin) of these T positions (rotary_angles), None for learned positions."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hd = C // self.n_head
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        if angles is not None:  # before the cache: cached keys keep the turn of their own position
            q, k = rotate(q, *angles), rotate(k, *angles)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hd): the past plus these T positions
        p = self.dropout if self.training else 0.0
        if allowed is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif T == 1:
            # one new query, a step of sampling: two small products. On a CPU the fused kernel's set-up
            # took most of a toy sampling step (NOTES.md, "Sampling 1.3 to 1.5 times as fast")
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, 1, S)
            y = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v  # (B, nh, 1, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gelu = cfg.gelu

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, allowed, cache=None, angles=None):
        x = x + self.attn(self.ln_1(x), allowed, cache, angles)
        return x + self.mlp(self.ln_2(x))


def rotary_angles(pos, head_dim, base=10000.0):
    """cos and sin of the rotary angles pos * base^(-2i / head_dim), i < head_dim / 2: (B, 1, T, head_dim / 2)
    each, for positions pos (B, T). Fast-turning pairs tell near distances apart, slow ones far ones."""
    freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angle = pos.unsqueeze(-1).float() * freq  # (B, T, head_dim / 2)
    return angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)


def rotate(x, cos, sin):
    """Turn each pair (x[i], x[i + hd/2]) of x (B, nh, T, hd) by its angle. Then the dot product of a query
    at position m and a key at n depends on m - n only: the positions' turns cancel but for their difference."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class LayerCache:
    """Keys and values of one layer for every position seen so far, preallocated to max_len."""

    def __init__(self, B, n_head, max_len, head_dim, device, dtype):
        self.k = torch.zeros(B, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def repeat_rows(self, n):
        """Each row n times in a row (row b -> rows b*n .. b*n+n-1): a prompt read once, sampled n times."""
        self.k, self.v = self.k.repeat_interleave(n, 0), self.v.repeat_interleave(n, 0)

    def append(self, k, v):
        T = k.size(2)
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


def attention_allowed(attn_mask, T):
    """Which keys each of the last T queries may attend to, given attn_mask (B, S) of real tokens.

    allowed[b, 0, t, s] = (s <= query position) and (key s is real, or s is the query itself).
    The query-itself exception keeps pad rows from a softmax over an empty set."""
    B, S = attn_mask.shape
    q_pos = torch.arange(S - T, S, device=attn_mask.device).view(T, 1)  # (T, 1)
    k_pos = torch.arange(S, device=attn_mask.device).view(1, S)  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    real_key = attn_mask.bool().view(B, 1, S)  # (B, 1, S)
    allowed = (causal & real_key) | (k_pos == q_pos)  # (B, T, S)
    return allowed.unsqueeze(1)  # (B, 1, T, S)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = None if cfg.rope else nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: each block adds to the residual stream twice
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def compile_forward(self):
        """torch.compile this model's forward, in place (it stays a GPT: state_dict, deepcopy). It serves
        the passes over whole sequences (SFT, scoring, GRPO's update); generate() calls forward directly,
        so sampling, whose KV cache grows every token, runs eager instead of recompiling."""
        self.compiled = True
        self.compile(dynamic=True)
        return self

    def num_params(self):
        """Parameters, less the position embedding (nanoGPT's count)."""
        return sum(p.numel() for p in self.parameters()) - (0 if self.wpe is None else self.wpe.weight.numel())

    def forward(self, idx, attn_mask=None, cache=None, only=None):
        """idx: (B, T) new token ids. attn_mask: (B, S) with 1 for real tokens over ALL positions the
        model can see (the cached past plus these T), for left-padded input; None for input that is
        unpadded or padded on the right. cache: a list of LayerCache (one per block) or None.
        Returns logits (B, T, vocab); with only, a (B, T) bool, the logits of those positions alone,
        (N, vocab) in row-major order: in a small model the output layer (T x n_embd x vocab) costs more
        than the blocks, and SFT and scoring read the completion's positions only."""
        B, T = idx.shape
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size={self.config.block_size}")
        if attn_mask is None and cache is None:
            # plain causal attention, no mask tensor: the kernel that reads no mask (flash, on a GPU)
            allowed, pos = None, torch.arange(T, device=idx.device).expand(B, T)  # (B, T)
        else:
            if attn_mask is None:
                attn_mask = torch.ones(B, past + T, dtype=torch.long, device=idx.device)
            # positions count real tokens only, so left padding does not shift a row
            pos = (attn_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # (B, T)
            allowed = attention_allowed(attn_mask, T)
        cfg = self.config
        angles = rotary_angles(pos, cfg.n_embd // cfg.n_head) if cfg.rope else None
        x = self.drop(self.wte(idx) if cfg.rope else self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, None if cache is None else cache[i], angles)
        x = self.ln_f(x)
        return self.lm_head(x if only is None else x[only])  # (B, T, vocab) or (N, vocab)

    def new_cache(self, B, max_len):
        """One LayerCache per block, in the dtype the keys and values are computed in: under autocast
        (bf16 on a GPU) that is the autocast dtype, so the cache is never cast again at every step."""
        cfg = self.config
        p = self.wte.weight
        kind = p.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else p.dtype
        return [LayerCache(B, cfg.n_head, max_len, cfg.n_embd // cfg.n_head, p.device, dtype) for _ in self.blocks]


def masked_logits(logits, allowed_ids):
    """Apply the paper's logit mask: tokens outside allowed_ids (a (vocab,) bool tensor) get -inf."""
    if allowed_ids is None:
        return logits
    return logits.masked_fill(~allowed_ids, float("-inf"))


def span_logprobs(model, ids, attn_mask, span_mask, temperature=1.0, allowed_ids=None):
    """log p(ids[b, t] | ids[b, <t]) at `temperature` for every t with span_mask[b, t] = 1, else 0.

    ids, attn_mask, span_mask: (B, T). The span is the completion (y for the FWM, z for the IDM);
    its first token must come after at least one prompt token. Returns (B, T) float32.
    Only the span positions go through the output layer and log_softmax: the cost is (tokens in span) x vocab."""
    target = span_mask[:, 1:].bool()  # (B, T-1): position t-1 predicts token t
    before = F.pad(target, (0, 1))  # (B, T): the positions whose logits predict a span token
    logits = model(ids, attn_mask, only=before)  # (N, V), in the order of ids[:, 1:][target]
    picked = masked_logits(logits.float() / temperature, allowed_ids)  # (N, V)
    logp = F.log_softmax(picked, dim=-1).gather(1, ids[:, 1:][target].unsqueeze(1)).squeeze(1)  # (N,)
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    out[:, 1:][target] = logp
    return out  # (B, T)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from logits (B, V). temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens strictly more likely than it already hold top_p of the mass;
        # the most likely token is therefore always kept
        drop_sorted = probs.cumsum(dim=-1) - probs > top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # inverse-CDF sampling: one uniform u per row, and the first token whose cumulative probability
    # passes u (torch.multinomial draws a random number for every token of the vocabulary instead)
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device, dtype=cdf.dtype)  # (B, 1)
    # right=True: the first token with cdf > u * total, so a token of probability 0 is never picked
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.size(1) - 1).squeeze(1)  # (B,)


@torch.no_grad()
def generate(
    model,
    ids,
    attn_mask,
    max_new_tokens,
    end_id,
    pad_id,
    temperature=1.0,
    top_k=None,
    top_p=None,
    allowed_ids=None,
    generator=None,
    num_samples=1,
    use_cache=True,
    check_every=8,
):
    """Continue each left-padded prompt in ids (B, T) by up to max_new_tokens tokens, num_samples times.

    Rows of the output are laid out prompt by prompt: row b * num_samples + g is sample g of prompt b.
    The prompts are read once (prefill) and their cache repeated, not read num_samples times.
    Each row stops at end_id (kept in the output); everything after it is pad_id. Whether every row has
    stopped is asked only every check_every tokens: asking makes the CPU wait for the GPU.
    Returns (tokens (B * num_samples, L), mask (same shape)) with L <= max_new_tokens, mask 1 on real
    tokens (end included). use_cache=False recomputes the whole sequence at every step: the slow oracle."""
    B, T = ids.shape
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"prompt of {T} tokens + {max_new_tokens} new tokens exceeds block_size={model.config.block_size}"
        )
    mask = attn_mask.repeat_interleave(num_samples, 0)  # (B * G, T)
    seq = None if use_cache else ids.repeat_interleave(num_samples, 0)  # the whole sequence: the oracle only
    if use_cache:
        cache = model.new_cache(B, T + max_new_tokens)
        logits = model.forward(ids, attn_mask, cache)[:, -1].repeat_interleave(num_samples, 0)  # (B * G, V): prefill
        for layer in cache:
            layer.repeat_rows(num_samples)
    else:
        logits = model.forward(seq, mask)[:, -1]  # (B * G, V)
    done = torch.zeros(mask.size(0), dtype=torch.bool, device=ids.device)
    out, out_mask = [], []
    for step in range(max_new_tokens):
        tok = sample_next(masked_logits(logits.float(), allowed_ids), temperature, top_k, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)  # (B * G,)
        out.append(tok)
        out_mask.append(~done)
        done = done | (tok == end_id)
        if step == max_new_tokens - 1 or (step % check_every == check_every - 1 and bool(done.all())):
            break
        mask = torch.cat([mask, torch.ones_like(tok[:, None])], dim=1)  # (B * G, T + t)
        if use_cache:
            logits = model.forward(tok[:, None], mask, cache)[:, -1]  # forward: never the compiled call
        else:
            seq = torch.cat([seq, tok[:, None]], dim=1)
            logits = model.forward(seq, mask)[:, -1]
    toks, real = torch.stack(out, dim=1), torch.stack(out_mask, dim=1).long()  # (B * G, L)
    length = int(real.sum(dim=1).max())  # drop the columns written after every row had stopped
    return toks[:, :length], real[:, :length]


def copy_model(model):
    """copy.deepcopy, keeping torch.compile: deepcopy drops a compiled module's compiled call, and
    compiling the copy again reuses the code already compiled (the weights are its inputs, not constants)."""
    clone = copy.deepcopy(model)
    return clone.compile_forward() if getattr(model, "compiled", False) else clone


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def model_state(model):
    """What a checkpoint needs to rebuild a model: its config and its weights."""
    return {"config": asdict(model.config), "weights": model.state_dict()}


def model_from_state(state, device="cpu"):
    model = GPT(GPTConfig(**state["config"]))
    model.load_state_dict(state["weights"])
    return model.to(device)


def load_checkpoint(path, device="cpu"):
    return torch.load(path, map_location=device, weights_only=False)


# ----------------------------------------------------------------------------------------------------
# Pretrained GPT-2 (`--init_from=gpt2`): Hugging Face's files, read without transformers or safetensors


class WeightsError(ValueError):
    """A weights folder that cannot be read: the message names the file and the fix."""


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """{name: tensor} from a .safetensors file. The format, in full:
        8 bytes        N, the header's length, an unsigned little-endian integer;
        N bytes        a JSON header {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}}
                       (and an optional "__metadata__" entry of strings);
        the rest       every tensor's raw little-endian bytes, at [begin, end) counted from here."""
    fix = "Fix: download the file again, or point --init_from at a folder with a complete model.safetensors."
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise WeightsError(f"{path}: not a safetensors file (header of {n} bytes in a file of {size}). {fix}")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise WeightsError(f"{path}: its header is not JSON. {fix}") from None
        header.pop("__metadata__", None)
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            if 8 + n + end > size:
                raise WeightsError(f"{path}: truncated ({size} bytes; tensor {name} ends at byte {8 + n + end}). {fix}")
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise WeightsError(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know.")
            f.seek(8 + n + begin)
            raw = bytearray(f.read(end - begin))  # a writable buffer: the tensor owns its memory
            flat = torch.frombuffer(raw, dtype=SAFETENSORS_DTYPES[info["dtype"]]) if raw else torch.zeros(0)
            tensors[name] = flat.reshape(info["shape"])
    return tensors


def gpt2_config(folder, vocab_size):
    """GPTConfig from a Hugging Face GPT-2 config.json; vocab_size: the rows the model needs (GPT-2's
    vocabulary plus our special tokens, see gpt2_from_folder)."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file. Fix: put GPT-2's config.json there (see the README).")
    with open(path) as f:
        hf = json.load(f)
    sizes = ("n_positions", "n_layer", "n_head", "n_embd")
    activation = hf.get("activation_function", "gelu_new")
    if hf.get("model_type") != "gpt2" or activation not in ("gelu_new", "gelu_pytorch_tanh") or not set(sizes) <= set(hf):
        raise WeightsError(f"{path}: not a GPT-2 config (model_type {hf.get('model_type')!r}, activation "
                           f"{activation!r}, sizes {[k for k in sizes if k in hf]}). Fix: --init_from takes GPT-2 "
                           "models only.")
    return GPTConfig(vocab_size=vocab_size, block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"],
                     n_embd=hf["n_embd"], dropout=0.0, bias=True, gelu="tanh")


def gpt2_from_folder(folder, vocab_size):
    """A GPT with GPT-2's weights from folder/config.json and folder/model.safetensors.

    Names: Hugging Face's h.{i}.* are our blocks.{i}.*, with or without the "transformer." prefix that
    GPT2LMHeadModel adds. GPT-2's linear layers are Conv1D modules, whose weights are stored (in, out): we
    transpose them to nn.Linear's (out, in). The output layer is tied to the embedding, so lm_head.weight
    (when present) is the same tensor. vocab_size > GPT-2's rows: the extra rows (our special tokens, then
    padding to a multiple of 64) start as the mean of GPT-2's rows, a token that is like no word in
    particular; no ordinary token's logit changes, since each is its own row times the final hidden state."""
    cfg = gpt2_config(folder, vocab_size)
    path = os.path.join(folder, "model.safetensors")
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file. Fix: put GPT-2's model.safetensors there (see the README).")
    hf = {k.removeprefix("transformer."): v for k, v in read_safetensors(path).items()}
    model = GPT(cfg)
    ours = model.state_dict()
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, param in ours.items():
            key = name.replace("blocks.", "h.", 1)
            if name == "lm_head.weight":
                continue  # tied to wte
            if key not in hf:
                raise WeightsError(f"{path}: no tensor {key}. Fix: --init_from takes GPT-2 models only.")
            value = hf[key].t() if key.endswith(transposed) else hf[key]
            if name == "wte.weight":
                rows = value.size(0)
                if rows > vocab_size:
                    raise WeightsError(f"{path}: {rows} embedding rows, more than the {vocab_size} asked for.")
                param[:rows] = value
                param[rows:] = value.float().mean(dim=0)
            elif value.shape != param.shape:
                raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, config.json says {tuple(param.shape)}.")
            else:
                param.copy_(value)
    return model
