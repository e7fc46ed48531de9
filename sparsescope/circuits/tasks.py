"""Bundled circuit tasks: clean/corrupted prompt pairs from seeded templates, and the metric they are scored by.

Every task yields :class:`Pair` s whose clean and corrupted prompts have the same number of tokens (so activations
line up position by position for patching), a set of ``good`` next tokens and a set of ``bad`` ones. The metric is
the log-odds of the good set against the bad set at the last position, ``logsumexp(good) − logsumexp(bad)``; with one
token on each side this is the usual logit difference. Words are kept only when this tokenizer spells them as one
token, so the same templates adapt to any tokenizer. A split is a disjoint slice of one seeded pool, so ``train``
(where circuits are found) and ``test`` (where they are scored) never share a prompt.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from scipy.stats import binomtest

from sparsescope.errors import UserError

SPLITS = ("train", "test")


@dataclass
class Pair:
    """One clean/corrupted prompt pair: token ids of equal length, the good and bad next tokens, the clean text."""

    clean: list[int]
    corrupt: list[int]
    good: list[int]
    bad: list[int]
    text: str


@dataclass
class Batch:
    """Right-padded tensors of a slice of pairs; ``last`` is the position whose next-token logits are scored."""

    clean: torch.Tensor  # [B, T] token ids of the clean prompts
    corrupt: torch.Tensor  # [B, T] token ids of the corrupted prompts (same lengths row by row)
    mask: torch.Tensor  # [B, T] attention mask (1 = real token)
    last: torch.Tensor  # [B] index of each prompt's last token
    good: torch.Tensor  # [B, G] good token ids, padded with the first good id
    good_mask: torch.Tensor  # [B, G] which entries of good are real
    bad: torch.Tensor  # [B, K] bad token ids, padded likewise
    bad_mask: torch.Tensor  # [B, K]


@dataclass
class TaskData:
    """The pairs of one task and split."""

    name: str
    split: str
    pairs: list[Pair]

    def batches(self, size: int = 32) -> Iterator[Batch]:
        for start in range(0, len(self.pairs), size):
            yield collate(self.pairs[start: start + size])

    @property
    def chance(self) -> float:
        """Accuracy of a model with equal logits everywhere: right when the good set is larger, half on ties."""
        return sum(1.0 if len(p.good) > len(p.bad) else 0.5 if len(p.good) == len(p.bad) else 0.0
                   for p in self.pairs) / len(self.pairs)


def collate(pairs: list[Pair]) -> Batch:
    width = max(len(p.clean) for p in pairs)
    b = len(pairs)
    clean = torch.zeros(b, width, dtype=torch.long)
    corrupt = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, p in enumerate(pairs):
        clean[i, : len(p.clean)] = torch.tensor(p.clean)
        corrupt[i, : len(p.corrupt)] = torch.tensor(p.corrupt)
        mask[i, : len(p.clean)] = 1
    last = mask.sum(1) - 1

    def pad(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(x) for x in lists)
        ids = torch.tensor([x + [x[0]] * (n - len(x)) for x in lists])
        return ids, torch.tensor([[True] * len(x) + [False] * (n - len(x)) for x in lists])

    good, good_mask = pad([p.good for p in pairs])
    bad, bad_mask = pad([p.bad for p in pairs])
    return Batch(clean, corrupt, mask, last, good, good_mask, bad, bad_mask)


def logit_diff(final: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per prompt ``logsumexp(good) − logsumexp(bad)`` of the logits ``[B, vocab]`` at its last token: ``[B]``."""
    good = final.gather(1, batch.good).masked_fill(~batch.good_mask, -math.inf).logsumexp(1)
    bad = final.gather(1, batch.bad).masked_fill(~batch.bad_mask, -math.inf).logsumexp(1)
    return good - bad


# -- word lists (filtered to single tokens of the tokenizer at hand) -----------------------------------------------
NAMES = ("Mary John Alice Bob Sarah Tom James Michael David Emma Anna Paul Mark Lisa Kate Jack Peter Laura Daniel "
         "Rachel Steven Susan George Linda Robert Karen Kevin Jessica Brian Amy Eric Helen Adam Julia Ryan Grace "
         "Henry Lucy Simon Alex Max Sam Ben Nick Chris Jane Dan Joe Tim Ann").split()
PLACES = "store park school office hospital station restaurant library garden beach".split()
OBJECTS = "drink book ring bone kiss basketball snack computer necklace bottle".split()
IOI_TEMPLATES = (
    "Then, {x} and {y} went to the {place}. {s} gave a {obj} to",
    "When {x} and {y} got a {obj} at the {place}, {s} decided to give it to",
    "After {x} and {y} went to the {place}, {s} gave a {obj} to",
    "While {x} and {y} were working at the {place}, {s} gave a {obj} to",
    "Friends {x} and {y} found a {obj} at the {place}. {s} gave it to",
)
EVENTS = "war expedition drought famine siege journey reign project voyage rebellion".split()
NOUNS = [("key", "keys"), ("author", "authors"), ("dog", "dogs"), ("teacher", "teachers"), ("car", "cars"),
         ("boy", "boys"), ("girl", "girls"), ("book", "books"), ("house", "houses"), ("student", "students"),
         ("doctor", "doctors"), ("friend", "friends"), ("tree", "trees"), ("table", "tables"), ("window", "windows"),
         ("bird", "birds"), ("officer", "officers"), ("player", "players"), ("singer", "singers"),
         ("farmer", "farmers"), ("king", "kings"), ("road", "roads"), ("cat", "cats"), ("painting", "paintings")]
SVA_TEMPLATES = ("The {s} near the {a}", "The {s} behind the {a}", "The {s} of the {a}", "The {s} next to the {a}")
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "England": "London", "Greece": "Athens",
            "Austria": "Vienna", "Norway": "Oslo", "Ireland": "Dublin", "Portugal": "Lisbon", "Poland": "Warsaw",
            "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana", "Thailand": "Bangkok",
            "Sweden": "Stockholm", "Turkey": "Ankara", "Iran": "Tehran", "Belgium": "Brussels", "Hungary": "Budapest",
            "Finland": "Helsinki", "Denmark": "Copenhagen", "Argentina": "Buenos", "India": "New",
            "Australia": "Canberra"}
CAPITAL_TEMPLATES = ("The capital of {c} is", "The capital city of {c} is", "{c}'s capital is the city of")


def _single(tok, words, space: bool = True) -> list[str]:
    """The words this tokenizer spells as one token (with a leading space when ``space``)."""
    return [w for w in words if len(_ids(tok, (" " if space else "") + w)) == 1]


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _ioi(tok, rng: random.Random) -> Pair:
    names = _single(tok, NAMES)
    if len(names) < 3:
        raise UserError("IOI needs at least 3 names that are one token in this tokenizer; it has "
                        f"{len(names)}; use a subword tokenizer (e.g. the embedded smollm2-135m)")
    a, b, c = rng.sample(names, 3)
    template, place, obj = rng.choice(IOI_TEMPLATES), rng.choice(PLACES), rng.choice(OBJECTS)
    x, y = (a, b) if rng.random() < 0.5 else (b, a)  # ABBA or BABA
    clean = template.format(x=x, y=y, s=b, place=place, obj=obj)
    corrupt = template.format(x=x, y=y, s=c, place=place, obj=obj)  # "ABC": the repeated name is replaced
    return Pair(_ids(tok, clean), _ids(tok, corrupt), _ids(tok, " " + a), _ids(tok, " " + b), clean)


def _digit_ids(tok) -> list[int]:
    ids = [_ids(tok, str(d)) for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise UserError("greater-than needs single-digit tokens or two-digit year tokens; this tokenizer has neither")
    return [i[0] for i in ids]


def _greater_than(tok, rng: random.Random) -> Pair:
    """GPT-2 tokenizes ``1732`` as ``17|32``; SmolLM2 splits digits, so the next token is the end year's tens digit:
    good = tens digits above the start year's, bad = those below (equal is ambiguous and counts for neither).
    The corrupted start year ends in ``01`` as in Hanna et al. (2023)."""
    century, event = rng.randint(11, 19), rng.choice(EVENTS)
    tens, ones = rng.randint(1, 8), rng.randint(0, 9)
    text = "The {e} lasted from the year {c}{yy} to the year {c}"
    clean = text.format(e=event, c=century, yy=f"{tens}{ones}")
    corrupt = text.format(e=event, c=century, yy="01")
    two_digit = _ids(tok, f" {century}{tens}{ones}")
    if len(two_digit) == 2:  # GPT-2 style: the next token is the two-digit year
        years = {y: _ids(tok, f"{y:02d}") for y in range(100)}
        if all(len(v) == 1 for v in years.values()):
            yy = tens * 10 + ones
            return Pair(_ids(tok, clean), _ids(tok, corrupt), [years[y][0] for y in range(yy + 1, 100)],
                        [years[y][0] for y in range(0, yy)], clean)
    digits = _digit_ids(tok)
    return Pair(_ids(tok, clean), _ids(tok, corrupt), digits[tens + 1:], digits[:tens], clean)


def _induction(tok, rng: random.Random) -> Pair:
    """Random tokens, then their first k repeated: the next token is the (k+1)-th. The corrupted prompt's first half
    is other random tokens, so only an induction mechanism can tell good (clean's next) from bad (corrupted's)."""
    lo, hi = (1000, 20000) if len(tok) > 20000 else (3, len(tok))  # ordinary word pieces, clear of special tokens
    length, k = 8, rng.randint(2, 5)
    tokens = rng.sample(range(lo, hi), 2 * length)
    first, other = tokens[:length], tokens[length:]
    clean, corrupt = first + first[:k], other + first[:k]
    return Pair(clean, corrupt, [first[k]], [other[k]], tok.decode(clean))


def _agreement(tok, rng: random.Random) -> Pair:
    """Subject–verb agreement across an attractor: good is the verb agreeing with the subject (" is"/" are"); the
    corrupted prompt flips the subject's number."""
    nouns = [(s, p) for s, p in NOUNS if len(_single(tok, [s, p])) == 2]
    if len(nouns) < 2 or len(_single(tok, ["is", "are"])) < 2:
        raise UserError("agreement needs one-token nouns and ' is'/' are' in this tokenizer; it lacks them")
    (s_sg, s_pl), (a_sg, a_pl) = rng.sample(nouns, 2)
    plural = rng.random() < 0.5
    template = rng.choice(SVA_TEMPLATES)
    attractor = a_sg if plural else a_pl  # the attractor always disagrees with the subject
    clean = template.format(s=s_pl if plural else s_sg, a=attractor)
    corrupt = template.format(s=s_sg if plural else s_pl, a=attractor)
    is_, are = _ids(tok, " is"), _ids(tok, " are")
    good, bad = (are, is_) if plural else (is_, are)
    return Pair(_ids(tok, clean), _ids(tok, corrupt), good, bad, clean)


def _capitals(tok, rng: random.Random) -> Pair:
    """Factual recall: good is the first token of the country's capital, bad that of the corrupted country's."""
    template = rng.choice(CAPITAL_TEMPLATES)
    countries = list(CAPITALS)
    for _ in range(100):
        a, b = rng.sample(countries, 2)
        clean, corrupt = template.format(c=a), template.format(c=b)
        good, bad = _ids(tok, " " + CAPITALS[a])[:1], _ids(tok, " " + CAPITALS[b])[:1]
        if len(_ids(tok, clean)) == len(_ids(tok, corrupt)) and good != bad:
            return Pair(_ids(tok, clean), _ids(tok, corrupt), good, bad, clean)
    raise UserError("capitals: no two countries of equal token length in this tokenizer; use another task")


TASKS: dict[str, Callable[[object, random.Random], Pair]] = {
    "ioi": _ioi,
    "greater_than": _greater_than,
    "induction": _induction,
    "agreement": _agreement,
    "capitals": _capitals,
}


def check_task(name: str) -> None:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")


def make_task(name: str, tokenizer, n: int = 32, split: str = "train", seed: int = 0) -> TaskData:
    """``n`` pairs of task ``name``: ``train`` and ``test`` are disjoint slices of one pool drawn with ``seed``."""
    check_task(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    if n < 1:
        raise UserError(f"need at least one prompt per split; got n={n}")
    rng = random.Random(f"{name}:{seed}")
    pool: dict[str, Pair] = {}
    for _ in range(200 * n):
        pair = TASKS[name](tokenizer, rng)
        pool.setdefault(pair.text, pair)
        if len(pool) == 2 * n:
            break
    if len(pool) < 2 * n:
        raise UserError(f"task {name!r} has only {len(pool)} distinct prompts for seed {seed}; ask for n ≤ "
                        f"{len(pool) // 2}")
    pairs = list(pool.values())
    return TaskData(name, split, pairs[:n] if split == "train" else pairs[n:])


@dataclass
class Performance:
    """How well the model does a task: accuracy (good beats bad) against chance, and the mean metric."""

    task: str
    n_prompts: int
    accuracy: float
    chance: float
    p_value: float  # one-sided binomial test of accuracy > chance
    logit_diff: float  # mean metric on clean prompts
    corrupt_logit_diff: float  # mean metric on the corrupted prompts
    at_chance: bool

    def check(self) -> None:
        """Refuse to look for a circuit of a behaviour the model does not show."""
        if self.at_chance:
            raise UserError(f"task {self.task!r}: the model's accuracy {self.accuracy:.2f} is at chance "
                            f"({self.chance:.2f}, p={self.p_value:.2g}, n={self.n_prompts}); a circuit would explain "
                            "nothing — choose another task or a stronger model")


ALPHA = 0.01  # a task counts as performed when accuracy beats chance at this one-sided significance level


def performance(clean: torch.Tensor, corrupt: torch.Tensor, data: TaskData) -> Performance:
    """Judge a task from the per-prompt metric on clean and corrupted prompts."""
    n = len(clean)
    correct = int((clean > 0).sum())
    chance = data.chance
    p = binomtest(correct, n, min(max(chance, 1e-9), 1 - 1e-9), alternative="greater").pvalue if n else 1.0
    return Performance(data.name, n, correct / n, chance, float(p), float(clean.mean()), float(corrupt.mean()),
                       bool(p >= ALPHA))
