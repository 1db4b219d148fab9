"""How the annotation queue orders clips: coverage of the clips (or the model's uncertainty),
then annotators' disagreement.

* `uncertainty(probs, method)`: 1 - margin (top-1 minus top-2 fused probability) or the entropy
  of the fused probabilities over log(#labels); both in [0, 1], 1 = the model cannot tell.
* `tally(votes)`: one vote per voter (their latest label, `emodemo.labels.vote`'s rule) as
  ({label: count}, disagreement), disagreement = 1 - the majority's share (0 below two votes).
* `compact(features)`: a clip's stored embedding (EMBED_DIM numbers); `embedding_matrix` puts a
  queue's embeddings in one array (the probability vectors where any clip lacks one).
* `coverage_order(emb, covered)`: the order the "coverage" serving order gives the clips nobody
  has voted on: typical clips far from what is covered first (TypiClust's typicality times the
  k-center distance; see the function). From a cold start on a new corpus the model's least
  sure clips are the ones it confuses, and its confident answers are often wrong: uncertainty
  order covers the clips badly and lost to random choice on the benchmark; coverage, the
  default, beats random on average over nEMO, Korean and EMOVO with the stratified-fold
  fine-tune (0.614 vs 0.587 unseen-speaker UA; level or below on nEMO; README, the re-run).
* `hybrid_order(emb, covered, unc, labels)`: the "hybrid" serving order, coverage weighted by the
  model's uncertainty with a floor of clips per predicted label (see the function); it lost to
  random and to coverage over nEMO, Korean and EMOVO, so it is an option, not the default.
* `balanced_order(emb, covered, probs, votes)`: the "balanced" serving order, coverage weighted
  by the expected need for each clip's true class (fewest votes first), the model's labels read
  through the confusion the votes so far show (`true_class_probs`): what a queue learns while a
  team votes, which random choice cannot use. It beat random on nEMO (both budgets) but lost on
  the Korean corpus and on the EMOVO confirmation run (fixed before it): mean unseen-speaker UA
  over the three leave-one-corpus-out corpora 0.574, random 0.608, coverage 0.582; an option.
* `spread_order(emb, covered, seed)`: the "spread" serving order, seeded random choice
  stratified over a tree of k-means clusters (bisecting k-means): each clip about as likely to
  be served early as under a uniform draw, each prefix spread over the clusters in proportion
  to their size (proportional stratified sampling: random choice's representativeness with
  less variance). Frozen before the EMOVO confirmation; 10 seeds a setting against random's 10
  (rule fixed before seeds 5-9): it wins three settings of six but not on average (unseen-speaker
  UA 0.574 vs 0.589; three refused fine-tunes at Korean n = 25), and again on the re-run with
  the stratified-fold fine-tune (0.576 vs 0.587); an option (scripts/queue_benchmark.py, README).
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..labels import time_order, voter
from .memo import on_disk

RANKINGS = ("margin", "entropy")
ORDERS = ("coverage", "uncertainty", "hybrid", "balanced", "spread")
SPACES = ("probabilities", "embedding")   # what "coverage" spreads over (probabilities won on nEMO)


def uncertainty(probs: Optional[Mapping[str, float]], method: str = "margin") -> float:
    """How unsure the model is about a clip, in [0, 1]; 1.0 when there are no probabilities."""
    if method not in RANKINGS:   # a programming error: QueueOptions and the CLI check the ranking
        raise ValueError(f"unknown ranking {method!r}; expected one of {', '.join(RANKINGS)}")
    p = sorted((max(0.0, float(v)) for v in (probs or {}).values() if v is not None
                and math.isfinite(float(v))), reverse=True)
    total = sum(p)
    if len(p) < 2 or total <= 0:
        return 1.0
    p = [v / total for v in p]
    if method == "margin":
        return float(min(1.0, max(0.0, 1.0 - (p[0] - p[1]))))
    ent = -sum(v * math.log(v) for v in p if v > 0)
    return float(min(1.0, ent / math.log(len(p))))


def tally(votes: Iterable[Any]) -> tuple[dict[str, int], float]:
    """({label: voters}, disagreement) of one clip's vote records (dicts with label, annotator,
    annotator_account, id, created_at); each voter counts once, with their latest label."""
    latest: dict[Any, str] = {}
    for rec in sorted(votes, key=time_order):
        latest[voter(rec)] = str(rec["label"])
    counts: dict[str, int] = {}
    for label in latest.values():
        counts[label] = counts.get(label, 0) + 1
    n = sum(counts.values())
    disagreement = 0.0 if n < 2 else 1.0 - max(counts.values()) / n
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), disagreement

# ---- coverage: the order at low budgets --------------------------------------------------------
EMBED_DIM = 32           # floats stored per clip: a fixed random projection of its pooled features
EMBED_SEED = 0           # the projection is the same for every clip, process and run
TYPICAL_K = 10           # neighbours that measure how typical a clip is (TypiClust's typicality)
EXACT_PICKS = 300        # greedy picks made one by one; the rest follow by their gain at that point
TYPICALITY_POWER = 0.5   # coverage score = typicality ** power x distance to the nearest covered clip
#                          (0.5 beat 0 and 1 on nEMO, scripts/queue_benchmark.py's development corpus)


@functools.lru_cache(maxsize=4)
def _projection(dim: int) -> np.ndarray:
    rng = np.random.default_rng(EMBED_SEED)
    return (rng.standard_normal((dim, EMBED_DIM)) / math.sqrt(EMBED_DIM)).astype(np.float32)


def compact(features: Sequence[float]) -> list[float]:
    """A clip's stored embedding: its features (the audio branch's standardised pooled backbone
    statistics) through a fixed Gaussian random projection to EMBED_DIM numbers, which keeps
    distances between clips (Johnson-Lindenstrauss) at a fraction of the size."""
    x = np.asarray(features, np.float32).ravel()
    if x.size <= EMBED_DIM:
        return [round(float(v), 5) for v in x]
    return [round(float(v), 5) for v in x @ _projection(x.size)]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _nearest_covered(emb: np.ndarray, covered: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each row's distance to the nearest covered row (inf where nothing is covered)."""
    near = np.full(len(emb), np.inf)
    for s in range(0, int(covered.sum()), block):
        near = np.minimum(near, _distances(emb, emb[covered][s:s + block]).min(1))
    return near


_TYPICAL_MEMO: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
TYPICAL_MEMO_SIZE = 4    # queues (embedding matrices) whose typicality / spread tree is kept: a
#                          served queue's clips change only when clips are added, so each next()
#                          reuses it


def _memoised(memo: OrderedDict, rows: np.ndarray, extra: tuple, compute: Any) -> Any:
    """`compute()` for the matrix `rows` (C-contiguous) and `extra`, kept in `memo` by content:
    the least recently used of more than TYPICAL_MEMO_SIZE entries is dropped."""
    key = (hashlib.blake2b(rows.tobytes(), digest_size=16).digest(), rows.shape, *extra)
    if key not in memo:
        memo[key] = compute()
        while len(memo) > TYPICAL_MEMO_SIZE:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


def typicality(emb: np.ndarray, k: int = TYPICAL_K, block: int = 1024) -> np.ndarray:
    """1 / mean distance to a clip's k nearest other clips, scaled to max 1 (dense = typical).
    O(n^2) in the clips (10 s for 20,000 on 2 cores), so memoised by the matrix's content: the
    same clips give the same values without recomputing them (per process, and on disk for
    large queues: `memo.on_disk`, so each CLI call does not compute it again)."""
    emb = np.asarray(emb, np.float64)
    if len(emb) < 2:                               # an empty queue, or one clip
        return np.ones(len(emb))
    rows = np.lexsort(emb.T[::-1])                 # the rows sorted, so
    canon = np.ascontiguousarray(emb[rows])        # the same clips in another order hit the memo
    out = np.empty(len(emb))
    out[rows] = _memoised(_TYPICAL_MEMO, canon, (k,),
                          lambda: on_disk("typicality", canon, (k,), lambda: _typicality(canon, k, block)))
    return out


def _typicality(emb: np.ndarray, k: int, block: int) -> np.ndarray:
    """`typicality` computed (at least two rows)."""
    n = len(emb)
    k = min(k, n - 1)
    out = np.empty(n)
    for s in range(0, n, block):
        d = _distances(emb[s:s + block], emb)
        d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
        out[s:s + block] = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
    typ = 1.0 / np.maximum(out, 1e-9)
    return typ / typ.max()


def coverage_order(emb: np.ndarray, covered: np.ndarray, weight: Optional[np.ndarray] = None,
                   power: float = TYPICALITY_POWER, k: int = TYPICAL_K,
                   exact: int = EXACT_PICKS) -> list[int]:
    """The uncovered rows of `emb` in greedy coverage order: each next one maximises
    typicality ** power x its distance to the nearest covered (or already ordered) row (x `weight`
    when given); with nothing covered yet the most typical goes first. Anytime: any prefix of
    the order spreads over the clips as well as the greedy rule can. After `exact` picks the
    rest is sorted by the gain then (each pick costs a pass over every clip; a team labels the
    first few hundred before the queue is asked again)."""
    emb = np.asarray(emb, np.float64)
    covered = np.asarray(covered, bool)
    score = typicality(emb, k) ** power * (1.0 if weight is None else np.asarray(weight, float))
    return _greedy_cover(emb, covered, score, np.full(len(emb), "", object), 0, exact)


def _greedy_cover(emb: np.ndarray, covered: np.ndarray, score: np.ndarray, labs: np.ndarray,
                  floor: int, exact: int, need: Optional["_Need"] = None) -> list[int]:
    """The greedy loop of the orders: each next row maximises score x its distance to the nearest
    covered or ordered row (x `need`'s weight, updated after each pick, when given), first among
    the rows of the least covered label (`labs`, "" = none) while one has fewer than
    min(floor, its rows); after `exact` picks the rest by that gain."""
    todo = ~covered
    total = {lab: int((labs == lab).sum()) for lab in sorted(set(labs) - {""})}
    have = {lab: int(((labs == lab) & covered).sum()) for lab in total}
    near = _nearest_covered(emb, covered)
    order: list[int] = []
    while todo.any():
        gain = score * np.where(np.isinf(near), 1.0, near) * (1.0 if need is None else need.weight())
        gain = np.where(todo, gain, -np.inf)
        short = [lab for lab in total if have[lab] < min(floor, total[lab])]
        if short:
            lab = min(short, key=lambda x: (have[x], x))
            gain = np.where(labs == lab, gain, -np.inf)
        elif len(order) >= exact:
            rest = np.flatnonzero(todo)
            return order + [int(i) for i in rest[np.argsort(-gain[rest], kind="stable")]]
        i = int(np.argmax(gain))
        order.append(i)
        todo[i] = False
        have[labs[i]] = have.get(labs[i], 0) + 1
        if need is not None:
            need.take(i)
        near = np.minimum(near, _distances(emb, emb[i:i + 1])[:, 0])
    return order


def embedding_matrix(embeddings: Sequence[Optional[Sequence[float]]],
                     probabilities: Sequence[Mapping[str, float]],
                     space: str = "embedding") -> np.ndarray:
    """[n, d]: with space "embedding" the clips' stored embeddings when every clip has one of the
    same length; else (space "probabilities", or clips queued before embeddings existed or by a
    model without them) their fused probability vectors, labels in sorted order."""
    dims = {len(e) if isinstance(e, (list, tuple)) else -1 for e in embeddings}
    if space == "embedding" and len(dims) == 1 and min(dims) > 0:
        return np.asarray(embeddings, np.float64)
    labels = sorted({lab for p in probabilities for lab in (p or {})})
    return np.asarray([[float((p or {}).get(lab) or 0.0) for lab in labels]
                       for p in probabilities], np.float64).reshape(len(probabilities), len(labels))


# ---- hybrid: uncertainty-weighted coverage with a floor per predicted label ----------------------
LABEL_FLOOR = 4          # clips per predicted label served before the rest: the fine-tune holds out
#                          25% of each class and needs 3 training clips per class (finetune.dataset)
MIN_WEIGHT = 1e-6        # a clip the model is certain about keeps a tiny weight (order among those)


def hybrid_order(emb: np.ndarray, covered: np.ndarray, unc: Sequence[float],
                 labels: Sequence[Optional[str]], floor: int = LABEL_FLOOR,
                 power: float = TYPICALITY_POWER, k: int = TYPICAL_K,
                 exact: int = EXACT_PICKS) -> list[int]:
    """The uncovered rows of `emb` in "hybrid" order, greedy and anytime as `coverage_order`,
    with gain = typicality ** power x uncertainty x distance to the nearest covered (or already
    ordered) row: typical clips, far from what is covered, that the model is unsure about
    (uncertainty-weighted diversity, as weighted k-means / BADGE at small budgets: labels on clips
    the base already gets right teach the fine-tune nothing). Floor: while a label the model
    predicts (`labels`, one per row; None: no prediction, no floor) has fewer than min(floor, its clips) rows covered or ordered,
    the next pick is the best clip predicted as the least covered such label (ties: label name),
    so the first fine-tune sees every class the model predicts."""
    emb = np.asarray(emb, np.float64)
    score = typicality(emb, k) ** power * np.maximum(np.asarray(unc, float), MIN_WEIGHT)
    labs = np.array(["" if lab is None else str(lab) for lab in labels], object)
    return _greedy_cover(emb, np.asarray(covered, bool), score, labs, floor, exact)


# ---- balanced: coverage weighted by the need for each true class, learnt from the votes ----------
VOTE_PRIOR = 2.0         # pseudo-votes each predicted label's row of the confusion starts with, all
#                          on that label (the model taken at its word until votes say otherwise)


def true_class_probs(probs: Sequence[Optional[Mapping[str, float]]],
                     votes: Sequence[Optional[Mapping[str, int]]]
                     ) -> tuple[np.ndarray, np.ndarray, list]:
    """(p [n, L], y [n, L], labels): each clip's probability of each true label, the model's fused
    probabilities through the confusion the votes show (p(true c | x) = sum_k p(k | x) M[k, c],
    M[k, c] = (sum over voted clips of p(k | clip) x its share of votes for c + VOTE_PRIOR [k = c])
    / the row's total); y: each voted clip's share of votes per label (rows of 0 without votes).
    Labels: the model's and the voted ones, sorted. On a corpus the model never heard, its
    labels are biased (nEMO: 0.40 UA); the votes say how, so the need for each class is
    estimated in true labels, not in the model's."""
    labels = sorted({lab for d in [*probs, *votes] for lab in (d or {})})
    col = {lab: j for j, lab in enumerate(labels)}

    def shares(rows) -> np.ndarray:
        m = np.zeros((len(rows), len(labels)))
        for i, d in enumerate(rows):
            for lab, v in (d or {}).items():
                m[i, col[lab]] = max(0.0, float(v or 0.0))
        tot = m.sum(1, keepdims=True)
        return np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)

    q, y = shares(probs), shares(votes)
    conf = q.T @ y + VOTE_PRIOR * np.eye(len(labels))
    conf /= conf.sum(1, keepdims=True)
    return q @ conf, y, labels


class _Need:
    """How much each row's true class is still wanted: sum_c p(c | row) / (1 + the votes class c
    has, counting what is already ordered by its probabilities); `take(i)` orders row i."""

    def __init__(self, p: np.ndarray, have: np.ndarray):
        self.p, self.have = p, np.asarray(have, float).copy()

    def weight(self) -> np.ndarray:
        return self.p @ (1.0 / (1.0 + self.have))

    def take(self, i: int) -> None:
        self.have += self.p[i]


def balanced_order(emb: np.ndarray, covered: np.ndarray,
                   probs: Sequence[Optional[Mapping[str, float]]],
                   votes: Sequence[Optional[Mapping[str, int]]],
                   power: float = TYPICALITY_POWER, exact: int = EXACT_PICKS) -> list[int]:
    """The uncovered rows of `emb` in "balanced" order, greedy and anytime as `coverage_order`,
    with gain = typicality ** power x distance to the nearest covered (or ordered) row x the
    expected need for the clip's true class (`_Need`: the classes with the fewest votes; the
    clip's class probabilities are the model's read through the confusion the votes show,
    `true_class_probs`). Covered rows without votes (leased) count by their probabilities.
    Development (nEMO, Korean; scripts/queue_benchmark.py): re-weighting those probabilities to
    the pool's class prior by label-shift EM anchored on the votes (Saerens et al. 2002) balanced
    the first 50 clips better in true labels (smallest class 7 / 11 clips vs 6 / 9 without) but
    fine-tuned worse (mean unseen-speaker UA 0.547 vs 0.658), so it was left out."""
    emb = np.asarray(emb, np.float64)
    covered = np.asarray(covered, bool)
    p, y, _ = true_class_probs(probs, votes)
    pending = covered & (y.sum(1) == 0)
    need = _Need(p, y.sum(0) + p[pending].sum(0))
    score = typicality(emb) ** power
    return _greedy_cover(emb, covered, score, np.full(len(emb), "", object), 0, exact, need)


# ---- spread: seeded random choice stratified over a tree of k-means clusters -------------------
SPREAD_BRANCH = 2        # children per split: bisecting k-means, so every prefix is stratified at
#                          every scale, from the two halves of the clips down to the leaves
SPREAD_LEAF = 8          # a cluster of at most this many clips is not split further
KMEANS_ITERATIONS = 25   # Lloyd iterations after the k-means++ start (stops early when settled)


def kmeans(emb: np.ndarray, k: int, rng: np.random.Generator,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Each row's cluster (0..k-1) by Lloyd's k-means from a k-means++ start drawn with `rng`."""
    n = len(emb)
    centres = [emb[rng.integers(n)]]
    for _ in range(1, k):
        d2 = _distances(emb, np.asarray(centres)).min(1) ** 2
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(emb[rng.choice(n, p=p)])
    centres_ = np.asarray(centres)
    assign = np.full(n, -1)
    for _ in range(iterations):
        new = _distances(emb, centres_).argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        for c in range(k):
            if (assign == c).any():
                centres_[c] = emb[assign == c].mean(0)
    return assign


class _Stratum:
    """A cluster of rows: split by k-means into `SPREAD_BRANCH` children down to `SPREAD_LEAF`
    rows; `taken` counts its covered or ordered rows, `tie` orders it among equal claims."""

    def __init__(self, emb: np.ndarray, rows: np.ndarray, rng: np.random.Generator):
        self.rows, self.taken, self.tie, self.children = rows, 0, rng.random(), []
        if len(rows) > SPREAD_LEAF:
            assign = kmeans(emb[rows], SPREAD_BRANCH, rng)
            if len(set(assign.tolist())) > 1:      # identical rows: a leaf
                self.children = [_Stratum(emb, rows[assign == c], rng)
                                 for c in range(SPREAD_BRANCH) if (assign == c).any()]

    def reset(self) -> None:
        """Nothing taken, here and below (a memoised tree is walked again)."""
        self.taken = 0
        for child in self.children:
            child.reset()

    def cover(self, row: int) -> None:
        """Count `row` (one of this stratum's) as taken, here and in the child holding it."""
        self.taken += 1
        for child in self.children:
            if row in child.members:
                child.cover(row)
                return

    @functools.cached_property
    def members(self) -> set:
        return set(self.rows.tolist())


def spread_order(emb: np.ndarray, covered: np.ndarray, seed: int = 0,
                 ids: Optional[Sequence[int]] = None) -> list[int]:
    """The uncovered rows of `emb` in "spread" order: seeded random choice, stratified. Every row
    (covered ones too) is placed in a tree of clusters by bisecting k-means (`_Stratum`); each
    next pick walks down from the root to the child furthest below its share of the picks so
    far (Sainte-Lague: the largest rows / (1 + 2 x covered or ordered rows), ties in a seeded
    random order), and serves a seeded random uncovered row of the leaf it reaches. Each clip is
    about as likely to be served early as under a uniform draw (random choice's
    representativeness; none of coverage's pull to typical clips the model already gets right),
    while every prefix, whatever its length, spreads over the clusters at every level in
    proportion to their size (less variance than a uniform draw). Anytime, and the same order
    for the same seed, clips and covered rows whatever order the rows come in (`ids`: a stable
    key per row, e.g. the queue item id; default the row index)."""
    emb = np.asarray(emb, np.float64)
    n = len(emb)
    canon = np.argsort(np.arange(n) if ids is None else np.asarray(ids), kind="stable")
    root, key = _spread_tree(emb[canon], int(seed))  # rows of the tree: positions in canon
    covered = np.asarray(covered, bool)[canon]       # a copy: ordered rows are marked in it
    for row in np.flatnonzero(covered):
        root.cover(int(row))
    order: list[int] = []
    while root.taken < n:
        node, path = root, [root]
        while node.children:
            node = max((c for c in node.children if c.taken < len(c.rows)),
                       key=lambda c: (len(c.rows) / (1.0 + 2.0 * c.taken), c.tie))
            path.append(node)
        row = min((int(r) for r in node.rows if not covered[r]), key=lambda r: key[r])
        covered[row] = True
        order.append(int(canon[row]))
        for s in path:
            s.taken += 1
    return order


_SPREAD_MEMO: "OrderedDict[tuple, tuple]" = OrderedDict()


def _spread_tree(emb: np.ndarray, seed: int) -> tuple["_Stratum", np.ndarray]:
    """(the tree of clusters with nothing taken, each row's place in its leaf's draw) for rows
    in their canonical order; built once per clips and seed (k-means over 20,000 clips takes
    seconds; memoised like `typicality`, TYPICAL_MEMO_SIZE entries)."""
    def build() -> tuple["_Stratum", np.ndarray]:
        rng = np.random.default_rng(seed)
        root = _Stratum(emb, np.arange(len(emb)), rng)
        return root, rng.random(len(emb))

    emb = np.ascontiguousarray(emb)
    root, key = _memoised(_SPREAD_MEMO, emb, (seed,), build)
    root.reset()
    return root, key
