"""The "balanced" serving order (rank.balanced_order): coverage weighted by the need for each true
class, the model's labels read through the confusion the votes show; through the rank functions,
the queue's Python API and `python -m emodemo queue list/next --order balanced`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from emodemo.annotate import AnnotationQueue, QueueOptions
from emodemo.annotate.rank import balanced_order, coverage_order, true_class_probs
from test_annotate import TwoLabelModel, tones


def test_true_class_probs_reads_the_model_through_the_votes():
    """Without votes p is the model's (normalised) probabilities; after votes saying the clips it
    calls "a" are "b", a clip it calls "a" is more likely "b" than "a", one it calls "c" stays "c"."""
    probs = [{"a": 0.9, "b": 0.05, "c": 0.05}] * 8 + [{"a": 0.05, "b": 0.05, "c": 1.8}]
    p, y, labels = true_class_probs(probs, [None] * 9)
    assert labels == ["a", "b", "c"] and not y.any()
    assert np.allclose(p[0], [0.9, 0.05, 0.05])
    assert np.allclose(p[8], np.array([0.05, 0.05, 1.8]) / 1.9)
    votes = [{"b": 1}] * 6 + [None] * 3
    p, y, _ = true_class_probs(probs, votes)
    assert np.allclose(y.sum(0), [0, 6, 0]) and np.allclose(p.sum(1), 1.0)
    assert p[7, 1] > 0.6 > p[7, 0] and p[8].argmax() == 2
    p, _, labels = true_class_probs(probs, [{"other": 2}] + [None] * 8)   # a label the model lacks
    assert labels == ["a", "b", "c", "other"] and p[1, 3] > 0


def _clusters(rng):
    """Rows 0-9 at 0 (called "a"), 10-19 at 10 (called "a"), 20-29 at 3 (called "b")."""
    emb = np.r_[rng.normal(0, 0.05, (10, 2)), rng.normal(10, 0.05, (10, 2)),
                rng.normal(3, 0.05, (10, 2))]
    probs = [{"a": 0.9, "b": 0.1}] * 20 + [{"a": 0.1, "b": 0.9}] * 10
    return emb, probs


def test_after_votes_of_one_class_the_next_clip_is_likely_another():
    """Six votes "a" on the first cluster: coverage alone serves the far cluster the model calls
    "a" next; balanced serves a clip it calls "b" (the class without votes) first, then still
    covers the far cluster; every row is ordered once and the order is deterministic."""
    emb, probs = _clusters(np.random.default_rng(0))
    covered = np.zeros(30, bool)
    covered[:6] = True
    votes = [{"a": 1}] * 6 + [None] * 24
    assert 10 <= coverage_order(emb, covered)[0] < 20
    order = balanced_order(emb, covered, probs, votes)
    assert order[0] >= 20 and sorted(order) == list(range(6, 30))
    assert any(10 <= i < 20 for i in order[1:3])
    assert order == balanced_order(emb, covered, probs, votes)
    # nothing voted: the first clip is coverage's (no class is needed more than another); the
    # next ones are weighed by the classes of the clips ordered before them
    none = np.zeros(30, bool)
    cold = balanced_order(emb, none, probs, [None] * 30)
    assert cold[0] == coverage_order(emb, none)[0] and {i // 10 for i in cold[:3]} == {0, 1, 2}


def test_leased_clips_count_by_their_probabilities():
    """A covered clip without votes (leased) counts as its probable class: six leased clips the
    model calls "a" make a clip it calls "b" next, as six votes "a" would."""
    emb, probs = _clusters(np.random.default_rng(1))
    covered = np.zeros(30, bool)
    covered[:6] = True
    assert 10 <= coverage_order(emb, covered)[0] < 20
    assert balanced_order(emb, covered, probs, [None] * 30)[0] >= 20


def test_the_votes_say_how_to_read_the_models_labels():
    """Votes say the clips the model calls "a" are "b": the far cluster it also calls "a" (likely
    "b", which has six votes) waits for a nearer one it calls "c" (no votes); read at its word
    ("a": no votes) the model's far cluster would go first, as it does in coverage order."""
    rng = np.random.default_rng(2)
    emb = np.r_[rng.normal(0, 0.05, (12, 2)), rng.normal(12, 0.05, (12, 2)),
                rng.normal(-10, 0.05, (12, 2))]
    probs = [{"a": 0.9, "c": 0.1}] * 24 + [{"a": 0.1, "c": 0.9}] * 12
    covered = np.zeros(36, bool)
    covered[:6] = True
    assert 12 <= coverage_order(emb, covered)[0] < 24
    assert balanced_order(emb, covered, probs, [{"b": 1}] * 6 + [None] * 30)[0] >= 24


def _queue(store, tmp_path):
    q = AnnotationQueue(store, TwoLabelModel(), QueueOptions(votes_needed=1, order="balanced"))
    q.add(tones(tmp_path / "in", 6))            # tone0, tone1: "sad"; tone2-5: "happy"
    return q


def _expected(q, covered_ids=(), votes=None):
    items = sorted(q.items(), key=lambda it: (it.done, -it.priority, it.id))
    fresh = [it for it in items if it.id not in covered_ids]
    rows = [it for it in items if it.id in covered_ids] + fresh
    emb = np.array([[it.probabilities["happy"], it.probabilities["sad"]] for it in items])
    covered = np.array([it.id in covered_ids for it in items])
    order = balanced_order(emb, covered, [it.probabilities for it in items],
                           [(votes or {}).get(it.id) for it in items])
    return rows, [items[i].id for i in order]


def test_balanced_is_an_order_of_the_queue(store, tmp_path):
    """QueueOptions(order="balanced") serves fresh clips in rank.balanced_order of their
    probability vectors and votes; after two "happy" votes the next clip is one called "sad"."""
    q = _queue(store, tmp_path)
    _, expect = _expected(q)
    assert [it.id for it in q.items()] == expect
    voted = {}
    for _ in range(2):
        it = next(it for it in q.items() if it.model_label == "happy" and it.id not in voted)
        q.vote(it.id, "ana", "happy")
        voted[it.id] = {"happy": 1}
    nxt = q.next("bob")
    assert nxt.model_label == "sad"
    assert nxt.id == _expected(q, set(voted), voted)[1][0]


@pytest.mark.slow
def test_cli_list_and_next_with_order_balanced(store, tmp_path):
    """`python -m emodemo queue list/next --order balanced` give the API's order (no model is
    loaded to list or serve clips)."""
    q = _queue(store, tmp_path)
    db = ["--db", store.database.url, "--media-dir", str(tmp_path / "media")]

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "emodemo", "queue", *args, *db, "--order",
                            "balanced", "--votes-needed", "1", "--json"], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    assert [row["id"] for row in cli("list")] == [it.id for it in q.items()]
    [served] = cli("next", "--annotator", "ana")
    assert served["id"] == q.items()[0].id and served["leased_by"] == "ana"
