"""
data.py: text in, tensors out.

Everything that knows what a state, an action or a file looks like lives here, so that model.py and
grpo.py can stay generic and swirl.py can read like the paper.

  1. Tokenisers. All three are tiktoken.Encoding objects that share our special tokens:
       - byte_tokenizer(): 256 byte tokens + specials, for the toy (one character = one token);
       - bpe_tokenizer(texts, vocab_size, cache_path): a small BPE vocabulary trained here, on the
         training corpus, by `train_bpe` (short and readable, not fast), then handed to tiktoken for
         fast encoding; cached next to the data so it is trained once, offline;
       - gpt2_tokenizer(): GPT-2's vocabulary from tiktoken, when it can be loaded (it needs a download).
  2. The prompt layouts of the two roles, in one place (see `fwm_prompt`, `idm_prompt`):
         FWM  P(y | x, z):  <|action|> z <|state|> x <|next|>   ->   y <|end|>
         IDM  Q(z | x, y):  <|state|> x <|next|> y <|action|>   ->   z <|end|>
     The FWM reads the action first so that y's i-th token sits len(x) + 1 tokens after x's i-th
     whatever z's length. With a state slot (the CPU preset) x is padded with <|pad|> to the longest
     training state, in both layouts, and that distance is the same for every transition: copying the
     unchanged part of x into y (FWM), or comparing y with x (IDM), is one fixed-offset attention pattern.
     With shared weights (one model, two roles) the prompt starts with <|fwm|> or <|idm|>.
  3. The Codec: the two roles' prompts fitted into the context, with their logit masks and longest
     outputs, so that a transition becomes token lists in one place; `collate` turns those into the
     left-padded tensors (ids, attention mask, completion mask) that model.py and grpo.py need.
  4. Episodes in JSONL, one per line:
         {"states": ["s0", "s1", ..., "sT"], "actions": ["a0", ..., "a(T-1)"]}
     "actions" may be missing, or hold null for unlabelled steps. `.jsonl.gz` loads too. Every bad
     line raises one DataError that names the file, the line and the fix. Episodes become transitions
     (x, y, action-or-None), split by episode.

Read next: swirl.py (the algorithm).
"""

import base64
import gzip
import hashlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass

import tiktoken
import torch

STATE, ACTION, NEXT, END, PAD, FWM_ROLE, IDM_ROLE = (
    "<|state|>", "<|action|>", "<|next|>", "<|end|>", "<|pad|>", "<|fwm|>", "<|idm|>"
)
SPECIALS = [STATE, ACTION, NEXT, END, PAD, FWM_ROLE, IDM_ROLE]

# How text is cut into chunks before BPE: words with their leading space, numbers, runs of other
# symbols, runs of whitespace. Merges never cross a chunk boundary. Written for Python's `re` and for
# tiktoken's Rust regex alike (ASCII classes only), so the trainer and the encoder cut text the same way.
SPLIT_PATTERN = r""" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""


class DataError(ValueError):
    """Bad input data: the message names the file, the line and the fix."""


# ----------------------------------------------------------------------------------------------------
# Tokenisers


class Tokenizer:
    """A tiktoken.Encoding plus the ids of our special tokens. Text never produces a special token:
    encode() treats "<|end|>" inside a state as ordinary characters."""

    def __init__(self, enc: tiktoken.Encoding, n_text: int):
        self.enc = enc
        self.name = enc.name
        self.vocab_size = enc.n_vocab
        self.n_text = n_text  # ids 0 .. n_text-1 are text (bytes and their merges); the specials come after
        ids = {s: enc.encode_single_token(s) for s in SPECIALS}
        self.state_id, self.action_id, self.next_id = ids[STATE], ids[ACTION], ids[NEXT]
        self.end_id, self.pad_id = ids[END], ids[PAD]
        self.fwm_id, self.idm_id = ids[FWM_ROLE], ids[IDM_ROLE]
        self.special_ids = set(ids.values())

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        """Text of the ids up to the first <|end|>, with pad and other special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.enc.decode([i for i in ids if i not in self.special_ids])

    def text_ids(self, vocab_size=None):
        """(vocab_size,) bool mask of every text token, plus <|end|>: a role may write any text and then
        stop, but never a marker, a pad or the other role's token (the paper's masks keep each output in
        its modality; they are not word lists). vocab_size: the model's rows, when padded past ours."""
        allowed = torch.zeros(vocab_size or self.vocab_size, dtype=torch.bool)
        allowed[: self.n_text] = True
        allowed[self.end_id] = True
        return allowed

    def seen_ids(self, texts, vocab_size=None):
        """(vocab_size,) bool mask of the tokens that appear in `texts`, plus <|end|>: for a closed world
        whose states are written in a fixed alphabet (the toy's grid symbols, its four action words)."""
        allowed = torch.zeros(vocab_size or self.vocab_size, dtype=torch.bool)
        for text in texts:
            allowed[self.encode(text)] = True
        allowed[self.end_id] = True
        return allowed


def _with_specials(name, pat_str, ranks, gap=0):
    """A Tokenizer of these text tokens with our special tokens after them (gap ids left unused between)."""
    first = max(ranks.values()) + 1 + gap
    specials = {s: first + i for i, s in enumerate(SPECIALS)}
    return Tokenizer(tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials),
                     n_text=max(ranks.values()) + 1)


def byte_tokenizer():
    """One token per byte (ids 0..255), then the specials: what the toy needs, and no training."""
    return _with_specials("swirl-bytes", SPLIT_PATTERN, {bytes([i]): i for i in range(256)})


def train_bpe(texts, vocab_size):
    """Learn BPE merges on `texts`; returns tiktoken's mergeable_ranks {token bytes: rank}.

    Start from the 256 single bytes; repeatedly find the most frequent adjacent pair of tokens inside
    the chunks of SPLIT_PATTERN and make it a new token. A token's rank is its creation order, which is
    the order in which tiktoken applies merges when it encodes."""
    if vocab_size < 256:
        raise ValueError(f"BPE vocab_size must be at least 256 (the byte tokens), got {vocab_size}")
    chunks = Counter(c.encode("utf-8") for t in texts for c in re.findall(SPLIT_PATTERN, t))
    words = [(list(w), n) for w, n in chunks.items()]  # each chunk as token ids, with its count
    vocab = {i: bytes([i]) for i in range(256)}
    ranks = {b: i for i, b in vocab.items()}
    while len(vocab) < vocab_size:
        pairs = Counter()
        for ids, n in words:
            for pair in zip(ids, ids[1:]):
                pairs[pair] += n
        # the same bytes can arise from two different pairs; keep only merges that make a new token
        pairs = {p: n for p, n in pairs.items() if vocab[p[0]] + vocab[p[1]] not in ranks}
        if not pairs:
            break  # every chunk is already a single token
        best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))  # most frequent; ties -> lowest ids
        new = len(vocab)
        vocab[new] = vocab[best[0]] + vocab[best[1]]
        ranks[vocab[new]] = new
        words = [(_merge(ids, best, new), n) for ids, n in words]
    return ranks


def _merge(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def corpus_hash(texts):
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def bpe_tokenizer(texts, vocab_size, cache_path=None):
    """Train (or load from cache_path) a BPE vocabulary of `vocab_size` tokens on `texts`.

    The cache file holds the corpus hash on its first line, then one `base64(token) rank` per line (the
    format of tiktoken's own .tiktoken files); a cache made from other texts is ignored and replaced."""
    texts = list(texts)
    key = f"{corpus_hash(texts)} {vocab_size}"
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            lines = f.read().splitlines()
        if lines and lines[0] == key:
            ranks = {base64.b64decode(tok): int(r) for tok, r in (ln.split() for ln in lines[1:])}
            return _with_specials(f"swirl-bpe{vocab_size}", SPLIT_PATTERN, ranks)
    ranks = train_bpe(texts, vocab_size)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        tmp = cache_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(key + "\n")
            f.writelines(f"{base64.b64encode(tok).decode()} {r}\n" for tok, r in ranks.items())
        os.replace(tmp, cache_path)
    return _with_specials(f"swirl-bpe{vocab_size}", SPLIT_PATTERN, ranks)


# GPT-2's rule for cutting text into chunks before BPE (contractions, letters, digits, other symbols, spaces)
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_tokenizer(folder=None):
    """GPT-2's BPE plus our specials, after GPT-2's 50,257 ids (its <|endoftext|>, id 50,256, is unused).

    With a folder (a pretrained model's), read from its vocab.json and merges.txt (GPT-2's encoder.json and
    vocab.bpe under other names), offline; without one, from tiktoken, which downloads the vocabulary on
    first use and fails offline: we say so, with the fix, instead of a network error."""
    if folder is not None:
        ranks = gpt2_ranks(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
        pat_str = GPT2_SPLIT_PATTERN
    else:
        try:
            base = tiktoken.get_encoding("gpt2")
        except Exception as e:  # network errors come in many types; all mean the same here
            raise DataError(
                f"could not load tiktoken's gpt2 vocabulary ({type(e).__name__}: {e}). It is downloaded on first "
                "use. Fix: run once with internet access, put GPT-2's vocab.json and merges.txt in the --init_from "
                "folder, or use --tokenizer=bpe (trained offline on your data)."
            ) from None
        ranks, pat_str = base._mergeable_ranks, base._pat_str
    return _with_specials("swirl-gpt2", pat_str, ranks, gap=1)  # gap: <|endoftext|>, so GPT-2's rows keep their ids


def gpt2_byte_alphabet():
    """GPT-2's files write each byte as a printable character: printable Latin-1 bytes stand for
    themselves, the other 68 (space, control bytes, ...) for the characters 256, 257, ... in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and b != ord(" ")]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def gpt2_ranks(vocab_path, merges_path):
    """tiktoken's {token bytes: rank} from vocab.json ({token: id}) and merges.txt ("a b" per line, in the
    order they were learned). A token's id is its rank, and merge i must make the token of id 256 + i:
    we check that, since tiktoken applies merges in rank order."""
    for path in (vocab_path, merges_path):
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file. Fix: put GPT-2's vocab.json and merges.txt beside its weights.")
    byte_of = gpt2_byte_alphabet()
    decode = lambda token: bytes(byte_of[c] for c in token)  # noqa: E731
    with open(vocab_path, encoding="utf-8") as f:
        ranks = {decode(t): i for t, i in json.load(f).items() if t != "<|endoftext|>"}
    with open(merges_path, encoding="utf-8") as f:
        merges = [line.split() for line in f.read().split("\n")[1:] if line.strip()]  # line 1: "#version"
    for i, (a, b) in enumerate(merges):
        if ranks.get(decode(a) + decode(b)) != 256 + i:
            raise DataError(f"{merges_path}:{i + 2}: merge {a!r} + {b!r} is not token {256 + i} of {vocab_path}. "
                            "Fix: use the vocab.json and merges.txt of one and the same tokenizer.")
    return ranks


# ----------------------------------------------------------------------------------------------------
# Prompt layouts: the only place that knows how the two roles see a transition


def fwm_prompt(tok, x, z, shared=False, slot=0):
    """Prompt of the forward model P(y | x, z); its completion is y.

    z comes before x. With x first, y's i-th token sits len(x) + len(z) + 2 tokens after x's i-th, a
    distance that changes with the action ("up" is 2 bytes, "right" 5), and the toy's small FWM had to
    learn to copy at each distance: with z first it copied far better after SFT (NOTES.md, "The FWM reads
    the action first"). slot > 0: x in a slot of that many tokens (see in_slot), so the distance is slot + 1."""
    role = [tok.fwm_id] if shared else []
    return role + [tok.action_id] + tok.encode(z) + [tok.state_id] + in_slot(tok, x, slot) + [tok.next_id]


def idm_prompt(tok, x, y, shared=False, slot=0):
    """Prompt of the inverse model Q(z | x, y); its completion is z. slot > 0: x in a slot (see in_slot),
    so that y's i-th token always sits slot + 1 tokens after x's i-th, the token it is compared with."""
    role = [tok.idm_id] if shared else []
    return role + [tok.state_id] + in_slot(tok, x, slot) + [tok.next_id] + tok.encode(y) + [tok.action_id]


def in_slot(tok, text, slot):
    """text's tokens padded with <|pad|> up to slot tokens (a longer text is kept whole, its distance off).

    Why: a small GPT from scratch copies by position far sooner than by content. With ScienceWorld states of
    95 to 364 tokens, the distance from x's i-th token to y's i-th changes with every x, and a 2-layer FWM
    never learned to copy within a CPU budget; in a slot it is one distance, and after 500 pretraining steps
    (on renamed pairs) two of five held-out predictions were x exactly (NOTES.md, "A state slot"). The pads
    are ordinary tokens to the model (attention sees them; they are never a target); the slot costs their
    length in every prompt."""
    ids = tok.encode(text)
    return ids + [tok.pad_id] * (slot - len(ids))


def renamed(texts, words, p, rng, endings=()):
    """texts (a pair's x and y, or a triple's x, y and action) with one random renaming of their words: each
    distinct whitespace-separated word becomes, with probability p, a word drawn from `words`, the same one
    wherever it occurs in any of the texts. Layout (lines, spaces) is kept. A renamed transition is a real
    one (the same changes, the same layout) that cannot be learned by heart: training on such transitions
    makes the FWM copy x (Renamer: swirl.pretrain_fwm, swirl.warm_start).
    endings (word_endings): a new word gets one of them, drawn at random, with probability ENDING_P."""
    names = {}
    for w in sorted({w for text in texts for w in text.split()}):  # sorted: the same draws in every process
        if rng.random() < p:
            new = rng.choice(words)
            names[w] = new + rng.choice(endings) if endings and rng.random() < ENDING_P else new
        else:
            names[w] = w
    return tuple(re.sub(r"\S+", lambda m: names[m.group()], text) for text in texts)


# How often a renamed word gets a random ending (word_endings): one in four makes the shipped snapshot's renamed
# x's 1.16 times the real ones in tokens, 212 of 3,748 longer than the slot, and some renamed SFT copies longer
# than 1,024 tokens (the CPU preset's context is 1,280) (NOTES.md, "Random endings").
ENDING_P = 0.25


def state_words(transitions):
    """The distinct whitespace-separated words of the transitions' states, sorted."""
    return sorted({w for t in transitions for s in (t.x, t.y) for w in s.split()})


def spelled_words(tok):
    """One made-up word per printable text token of tok: the token's text, whitespace removed.
    A tokeniser trained on the training states makes most training words one token each; a word that only
    a held-out variation has ("tortoise", "platinum") is written with sub-word tokens that no training state
    uses, so a small FWM never sees them copied, and where x has one its copy slips there (NOTES.md,
    "Spelled words in the renamings"). Renaming with these words shows such tokens in a copy, but only where
    BPE writes the word as that token: a word's first piece after a space, a piece that continues a word only
    after a tab (a line's first word); word_endings shows those. Mostly one token each, so a renamed state is
    not longer than a real one."""
    return [p for p in (tok.decode([i]).strip() for i in range(tok.n_text)) if plain(p)]


def word_endings(tok):
    """The text of each printable token of tok with no space in front: a piece that continues a word ("ar" of
    " sugar", "um" of "platinum") or punctuation. renamed puts one, drawn at random, after some new words.
    Drawn at random, not each with a start of its own: with one fixed start per piece (" she" + "ar") the FWM
    learned to guess the piece from the start, and copied such pieces of held-out words with a mean
    probability of 0.15 to 0.50 (NOTES.md, "Random endings")."""
    return [p for p in (tok.decode([i]) for i in range(tok.n_text)) if plain(p)]


def plain(text):
    """Text a state's word could be: printable, no whitespace, not a byte cut in half (U+FFFD)."""
    return bool(text) and text.isprintable() and "\ufffd" not in text and not any(c.isspace() for c in text)


def renaming_words(tok, transitions):
    """What renamed draws from: the transitions' state words and spelled_words (most of them; with the
    recipe's rename=0.5 half a state's words stay as they were, so it still reads like the environment's)."""
    return state_words(transitions) + spelled_words(tok)


class Renamer:
    """ScienceWorld's data trick (data/scienceworld/recipe.txt, --rename=0.5), not part of SWIRL: transitions
    whose words are renamed at random (renamed, with words from renaming_words and endings from
    word_endings), so that a small FWM that has learned a few hundred real rooms by heart must copy x
    instead of reciting them (NOTES.md, "A state slot", "Renamed triples in SFT"). swirl.run_swirl takes one
    (renamer=...) and shows the FWM renamed pairs in pretraining and renamed copies beside its SFT triples;
    on worlds whose states are not learned by heart it did harm (NOTES.md, "One preset for every world")."""

    def __init__(self, tok, p):
        self.tok, self.p, self.endings = tok, p, word_endings(tok)

    def words(self, transitions):
        return renaming_words(self.tok, transitions)

    def pair(self, t, words, rng):
        """(x, y, source) of t's pair under one fresh renaming (a pretraining example)."""
        return (*renamed((t.x, t.y), words, self.p, rng, self.endings), renamed_source(t))

    def copies(self, transitions, rng):
        """Each labelled transition once more, its words renamed at random alike in x, y and the action: the
        same change, in words that cannot be recited. The FWM's SFT on the real triples alone drifts back to
        reciting the training rooms; with these beside them it keeps copying x (NOTES.md, "Renamed triples
        in SFT"). Their price: it also learns to leave the action alone, and writes no change, even on its
        training triples (NOTES.md, "The renamed SFT copies ..."). Not the IDM's: in a probe they did not
        help it read held-out actions."""
        words = self.words(transitions)
        return [Transition(*renamed((t.x, t.y, t.action), words, self.p, rng, self.endings), t.episode,
                           renamed_source(t)) for t in transitions]


def renamed_source(t):
    """Where a renamed copy of t comes from, for an error about its length: a renamed state can be longer than
    the real one (ENDING_P), so the fix may be --block_size though the real transition fits."""
    return f"{t.source} (renamed, --rename)"


def completion(tok, text):
    """The tokens a model must write: the text, then <|end|> so it learns to stop."""
    return tok.encode(text) + [tok.end_id]


def collate(prompts, completions=None, pad_id=0, device="cpu", side="left"):
    """Pad prompt (+ completion) token lists into one batch.

    Returns ids (B, T), attn_mask (B, T) with 1 on real tokens, and span_mask (B, T) with 1 on the
    completion tokens (all zero when completions is None: a batch of prompts for generation).
    side="left" puts every prompt's end in the same column, which batched generation needs; side="right"
    is for log-probs only (SFT, rewards, GRPO): the model then needs no mask (see model.py, "Padding")."""
    completions = completions if completions is not None else [[] for _ in prompts]
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs)

    def pad(row, value):  # padded Python lists, then one tensor each: cheaper than a tensor per row
        return [value] * (T - len(row)) + row if side == "left" else row + [value] * (T - len(row))

    ids = torch.tensor([pad(s, pad_id) for s in seqs], dtype=torch.long)
    attn = torch.tensor([pad([1] * len(s), 0) for s in seqs], dtype=torch.long)
    span = torch.tensor([pad([0] * len(p) + [1] * len(c), 0) for p, c in zip(prompts, completions)], dtype=torch.long)
    return ids.to(device), attn.to(device), span.to(device)


def check_fits(tok, prompt, target, block_size, source, truncate=False):
    """Return (prompt, target) that fit in block_size tokens, or raise a DataError with the numbers.

    With truncate=True: a target longer than half the block keeps its first tokens and its <|end|>;
    then the prompt loses the tokens right after <|state|> (the start of state x; the action and the
    other markers are kept, in both layouts), and raises if losing all of x would not be enough."""
    n = len(prompt) + len(target)
    if n <= block_size:
        return prompt, target
    if not truncate:
        raise DataError(
            f"{source}: this transition needs {n} tokens (prompt {len(prompt)} + completion {len(target)}) "
            f"but block_size is {block_size}. Fix: raise --block_size, shorten the states, or pass --truncate=True."
        )
    half = block_size // 2
    if len(target) > half:
        target = target[: half - 1] + target[-1:]
    head = prompt.index(tok.state_id) + 1  # x starts right after <|state|> ...
    x_len = prompt.index(tok.next_id) - head  # ... and ends at <|next|>, in both layouts
    excess = len(prompt) + len(target) - block_size
    if excess > x_len:  # the IDM's y or the FWM's z alone is too long: cutting x cannot help
        raise DataError(
            f"{source}: this transition needs {n} tokens and would still need {excess - x_len} too many with "
            f"its state x cut away entirely (block_size {block_size}). Fix: raise --block_size or shorten the states."
        )
    if excess > 0:
        prompt = prompt[:head] + prompt[head + excess :]
    return prompt, target


# ----------------------------------------------------------------------------------------------------
# The Codec: a transition as each role's (prompt, completion) tokens, fitted into the context


@dataclass
class Codec:
    """Everything the two roles need to turn a transition into tokens and back: the tokenizer, the
    logit masks (which tokens each role may write), the longest outputs, and fitting into block_size.
    swirl.py reads like the paper because it only ever asks this object for examples."""

    tok: Tokenizer
    block_size: int
    state_ids: torch.Tensor  # (vocab,) bool: the FWM may only write these (plus <|end|>)
    action_ids: torch.Tensor  # (vocab,) bool: the IDM may only write these (plus <|end|>)
    max_state_tokens: int  # longest y the FWM writes, <|end|> included
    max_action_tokens: int  # longest z the IDM writes, <|end|> included
    known_actions: frozenset = frozenset()  # the labelled actions (reward-hacking stats only)
    shared: bool = False  # one model for both roles: prompts start with the role's token
    truncate: bool = False  # cut the start of x instead of raising when a transition does not fit
    state_slot: int = 0  # > 0: x is padded to this many tokens in both prompts (see in_slot); 0: no slot

    def fwm_example(self, x, z, y=None, source="?"):
        """(prompt, target) for P(y | x, z). With y None (generation) the target is [] and the prompt
        must leave room for the longest state the FWM may write."""
        prompt = fwm_prompt(self.tok, x, z, self.shared, self.state_slot)
        return self._fit(prompt, completion(self.tok, y) if y is not None else None, self.max_state_tokens, source)

    def idm_example(self, x, y, z=None, source="?"):
        """(prompt, target) for Q(z | x, y); target [] when z is None (generation)."""
        prompt = idm_prompt(self.tok, x, y, self.shared, self.state_slot)
        return self._fit(prompt, completion(self.tok, z) if z is not None else None, self.max_action_tokens, source)

    def action_target(self, z):
        """z's tokens and <|end|> as a target after a prompt built for generation, cut to the room that prompt
        left (max_action_tokens). z is text the IDM wrote and we decoded: one it did not end is a token longer
        than the room, and bytes it wrote that are no UTF-8 decode to U+FFFD and encode again as three; either
        would not fit a block sized to the labels. Scored as written, without the <|end|> it never wrote."""
        return completion(self.tok, z)[: self.max_action_tokens]

    def _fit(self, prompt, target, room, source):
        if target is None:
            prompt, _ = check_fits(self.tok, prompt, [self.tok.end_id] * room, self.block_size, source, self.truncate)
            return prompt, []
        return check_fits(self.tok, prompt, target, self.block_size, source, self.truncate)

    def to(self, device):
        """Move the logit masks to the models' device (they index the logits there)."""
        self.state_ids, self.action_ids = self.state_ids.to(device), self.action_ids.to(device)
        return self


def make_codec(tok, block_size, labelled, unlabelled, shared=False, truncate=False, closed_world=False,
               vocab_size=None, state_slot=False):
    """Logit masks and lengths from the training data: states from every pair, actions from the labels.
    Text may hold words no training state had, so each role may write any text (Tokenizer.text_ids);
    closed_world=True (the toy) keeps each role to the tokens its training outputs use, the analogue of
    the paper's masks that keep image tokens and text tokens apart. vocab_size: the model's rows.
    state_slot=True: x sits in a slot as long as the longest training state (see in_slot)."""
    states = {t.x for t in labelled + unlabelled} | {t.y for t in labelled + unlabelled}
    actions = {t.action for t in labelled}
    longest_state = max(len(tok.encode(s)) for s in states)
    return Codec(
        tok=tok,
        block_size=block_size,
        state_ids=tok.seen_ids(states, vocab_size) if closed_world else tok.text_ids(vocab_size),
        action_ids=tok.seen_ids(actions, vocab_size) if closed_world else tok.text_ids(vocab_size),
        max_state_tokens=longest_state + 1,
        max_action_tokens=max(len(tok.encode(a)) for a in actions) + 1,
        known_actions=frozenset(actions),
        shared=shared,
        truncate=truncate,
        state_slot=longest_state if state_slot else 0,
    )


# ----------------------------------------------------------------------------------------------------
# Episodes and transitions


@dataclass
class Episode:
    states: list  # [s0, ..., sT], strings
    actions: list  # [a0, ..., a(T-1)], each a string or None (unlabelled)
    source: str = "?"  # "file:line", for error messages


@dataclass
class Transition:
    x: str
    y: str
    action: object  # str, or None when unlabelled
    episode: int  # index of the episode it came from
    source: str = "?"


def _open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def parse_episode(obj, source):
    """Validate one decoded JSON line and turn it into an Episode, or raise one clear DataError."""
    fmt = 'each line must be {"states": ["s0", "s1", ...], "actions": ["a0", ...]} ("actions" optional)'
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(obj).__name__}. Fix: {fmt}")
    if "states" not in obj:
        raise DataError(f'{source}: missing "states". Fix: {fmt}')
    states = obj["states"]
    if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
        raise DataError(f'{source}: "states" must be a list of strings. Fix: {fmt}')
    if len(states) < 2:
        raise DataError(
            f"{source}: an episode needs at least two states to make one transition, got {len(states)}. "
            "Fix: drop this line or add its next state."
        )
    actions = obj.get("actions")
    if actions is None:
        actions = [None] * (len(states) - 1)
    if not isinstance(actions, list) or not all(a is None or isinstance(a, str) for a in actions):
        raise DataError(f'{source}: "actions" must be a list of strings or nulls. Fix: {fmt}')
    if len(actions) != len(states) - 1:
        raise DataError(
            f"{source}: {len(states)} states need {len(states) - 1} actions (one per step), got {len(actions)}. "
            "Fix: give one action per transition, null where unknown."
        )
    unknown = set(obj) - {"states", "actions"}
    if unknown:
        raise DataError(f"{source}: unknown key(s) {sorted(unknown)}. Fix: {fmt}")
    return Episode(states=states, actions=actions, source=source)


def load_episodes(path):
    """Read and validate a .jsonl or .jsonl.gz file of episodes; blank lines are skipped."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file. Fix: check --data, --val_data and --eval_data.")
    episodes = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                # parsed without its newline, so that an error's column is a column of this line
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: not valid JSON ({e.msg} at column {e.colno}). Fix: one JSON object per line.") from None
            episodes.append(parse_episode(obj, source))
    if not episodes:
        raise DataError(f"{path}: the file holds no episodes. Fix: one JSON object per line, see data.py.")
    return episodes


def write_episodes(path, episodes):
    """Write episodes as JSONL (gzip when the name ends in .gz), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8") as f:
        for ep in episodes:
            row = {"states": ep.states}
            if any(a is not None for a in ep.actions):
                row["actions"] = ep.actions
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_splits(out, states, actions, n_labelled, n_unlabelled, n_val=0):
    """A simulated world's episodes (lists of state texts and of actions) as train_llm.py's data, in the order
    labelled, unlabelled, validation, test: the first n_labelled keep their actions, the next n_unlabelled
    have none (SWIRL's), the next n_val (early stopping and each phase's checks) and the rest (metrics) keep
    theirs. Writes out/train.jsonl.gz, out/val.jsonl.gz when n_val > 0, and out/test.jsonl.gz; returns how
    many episodes each holds (train, val, test)."""
    def episodes(start, stop, labelled=True):
        return [Episode(s, a if labelled else [None] * len(a)) for s, a in zip(states[start:stop], actions[start:stop])]

    n_train = n_labelled + n_unlabelled
    train = episodes(0, n_labelled) + episodes(n_labelled, n_train, labelled=False)
    val, test = episodes(n_train, n_train + n_val), episodes(n_train + n_val, len(states))
    write_episodes(os.path.join(out, "train.jsonl.gz"), train)
    if val:
        write_episodes(os.path.join(out, "val.jsonl.gz"), val)
    write_episodes(os.path.join(out, "test.jsonl.gz"), test)
    return len(train), len(val), len(test)


def transitions(episodes):
    """Episodes -> (x, y, action-or-None) for every consecutive pair of states."""
    return [
        Transition(ep.states[t], ep.states[t + 1], ep.actions[t], i, ep.source)
        for i, ep in enumerate(episodes)
        for t in range(len(ep.states) - 1)
    ]


def split_episodes(episodes, fractions, seed=0):
    """Shuffle episodes with `seed` and cut them into len(fractions) parts by episode, so no episode's
    states leak between parts (held-out data must be held out). The last part takes the remainder."""
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else start + round(frac * len(order))
        parts.append([episodes[j] for j in order[start:end]])
        start = end
    return parts


def strip_actions(episodes):
    """The same episodes with every action hidden: what SWIRL's unlabelled half looks like."""
    return [Episode(ep.states, [None] * len(ep.actions), ep.source) for ep in episodes]


def labelled_and_unlabelled(trans):
    """Split transitions into those with an action (feed SFT) and those without (feed SWIRL)."""
    return [t for t in trans if t.action is not None], [t for t in trans if t.action is None]


def with_action(t, action):
    """The same transition with another action (None hides it; a pseudo-label replaces it)."""
    return Transition(t.x, t.y, action, t.episode, t.source)
