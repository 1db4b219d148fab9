"""The "spread" serving order (rank.spread_order): seeded random choice stratified over a tree of
k-means clusters; through the rank function, the queue's Python API and
`python -m emodemo queue list/next --order spread --seed`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from emodemo.annotate import AnnotationQueue, QueueOptions
from emodemo.annotate.rank import spread_order
from emodemo.errors import EmodemoError
from test_annotate import TwoLabelModel, tones

BLOBS = 4            # well-separated clusters of the synthetic mixture
BLOB_SIZES = (60, 30, 20, 10)


def _mixture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, blob of each row): BLOBS tight, far apart Gaussian blobs of BLOB_SIZES rows."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(BLOBS, 3)
    emb = np.concatenate([rng.normal(c, 0.3, (k, 3)) for c, k in zip(centres, BLOB_SIZES)])
    return emb, np.repeat(np.arange(BLOBS), BLOB_SIZES)


def test_same_seed_same_order_other_seeds_differ():
    """Every uncovered row once; the same seed gives the same order, whatever order the rows
    come in (ids), and different seeds give different orders."""
    emb, _ = _mixture()
    covered = np.zeros(len(emb), bool)
    order = spread_order(emb, covered, seed=3)
    assert sorted(order) == list(range(len(emb)))
    assert spread_order(emb, covered, seed=3) == order
    perm = np.random.default_rng(1).permutation(len(emb))
    shuffled = spread_order(emb[perm], covered, seed=3, ids=perm)
    assert [int(perm[i]) for i in shuffled] == order
    firsts = {tuple(spread_order(emb, covered, seed=s)[:10]) for s in range(5)}
    assert len(firsts) == 5


def test_prefixes_spread_over_the_clusters_better_than_a_uniform_draw():
    """Over 50 seeds, each blob's count in the first 4 / 8 / 12 / 20 clips is within half a clip
    of its share of the rows (proportional stratification at every prefix; a uniform draw is off
    by more than a clip on average), and the first 8 reach every blob."""
    emb, blob = _mixture()
    covered = np.zeros(len(emb), bool)
    share = np.asarray(BLOB_SIZES) / sum(BLOB_SIZES)
    rng = np.random.default_rng(0)
    for n in (4, 8, 12, 20):
        uniform = [np.abs(np.bincount(blob[rng.permutation(len(emb))[:n]], minlength=BLOBS)
                          - n * share).max() for _ in range(200)]
        assert np.mean(uniform) > 1.0
        for seed in range(50):
            order = np.asarray(spread_order(emb, covered, seed=seed))
            counts = np.bincount(blob[order[:n]], minlength=BLOBS)
            assert np.abs(counts - n * share).max() <= 0.5
            assert n < 8 or (counts > 0).all()


def test_covered_rows_are_left_out_and_count_for_their_cluster():
    """Rows already covered are not served, and their cluster gets fewer of the next picks: with
    the whole smallest blob and half of the largest covered, the next 20 come from the rest in
    proportion to what each blob lacks."""
    emb, blob = _mixture()
    covered = (blob == 3) | ((blob == 0) & (np.arange(len(emb)) < 30))
    order = spread_order(emb, covered, seed=0)
    assert set(order) == set(np.flatnonzero(~covered).tolist())
    counts = np.bincount(blob[order[:20]], minlength=BLOBS)
    assert counts[3] == 0 and counts[0] < counts[1] + 3


def test_an_ordered_prefix_voted_on_leaves_the_rest_of_the_order():
    """Anytime: covering the first k rows of an order gives the rest of that same order."""
    emb, _ = _mixture(1)
    covered = np.zeros(len(emb), bool)
    order = spread_order(emb, covered, seed=7)
    covered[order[:15]] = True
    assert spread_order(emb, covered, seed=7) == order[15:]


def test_seed_is_checked():
    with pytest.raises(EmodemoError):
        QueueOptions(order="spread", seed=-1)
    with pytest.raises(EmodemoError):
        QueueOptions(order="spread", seed=1.5)


def _queue(store, tmp_path, seed=0):
    q = AnnotationQueue(store, TwoLabelModel(), QueueOptions(votes_needed=1, order="spread",
                                                             seed=seed))
    q.add(tones(tmp_path / "in", 12))
    return q


def test_spread_is_an_order_of_the_queue(store, tmp_path):
    """QueueOptions(order="spread", seed=s) serves fresh clips in rank.spread_order of their
    probability vectors keyed by item id; a vote takes its clip out and leaves the order."""
    q = _queue(store, tmp_path, seed=2)
    items = sorted(q.items(), key=lambda it: it.id)
    emb = np.array([[it.probabilities["happy"], it.probabilities["sad"]] for it in items])
    expect = [items[i].id for i in spread_order(emb, np.zeros(len(items), bool), 2,
                                                [it.id for it in items])]
    assert [it.id for it in q.items()] == expect
    served = q.next("ana")
    assert served.id == expect[0]
    q.vote(served.id, "ana", "happy")
    assert [it.id for it in q.items() if not it.done] == expect[1:]


@pytest.mark.slow
def test_cli_list_and_next_with_order_spread(store, tmp_path):
    """`python -m emodemo queue list/next --order spread --seed 2` give the API's order."""
    q = _queue(store, tmp_path, seed=2)
    db = ["--db", store.database.url, "--media-dir", str(tmp_path / "media")]

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "emodemo", "queue", *args, *db, "--order",
                            "spread", "--seed", "2", "--votes-needed", "1", "--json"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    assert [row["id"] for row in cli("list")] == [it.id for it in q.items()]
    [served] = cli("next", "--annotator", "ana")
    assert served["id"] == q.items()[0].id and served["leased_by"] == "ana"
