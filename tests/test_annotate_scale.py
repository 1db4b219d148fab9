"""The annotation queue at a campaign's scale (benchmarks/bench_queue.py measures the time): the
typicality memo gives exactly what computing it gives, whatever order the clips come in; a vote
on a stored clip decodes nothing; `progress` and `item` read less but say what the full load says;
a 3,000-clip queue computes its typicality once while an annotator works through it."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import ROOT
from emodemo.annotate import AnnotationQueue, QueueOptions
from emodemo.annotate import rank
from emodemo.errors import StoreError
from test_annotate import ScriptedModel, tones

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_queue  # noqa: E402


def _clumps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 7)) * 3
    return centres[rng.integers(5, size=n)] + rng.standard_normal((n, 7))


def test_typicality_memo_matches_the_computation_in_any_row_order():
    emb = _clumps(300)
    rank._TYPICAL_MEMO.clear()
    fresh = rank._typicality(emb, rank.TYPICAL_K, 1024)
    assert np.allclose(rank.typicality(emb), fresh)              # computed, memoised
    assert len(rank._TYPICAL_MEMO) == 1
    perm = np.random.default_rng(1).permutation(len(emb))
    assert np.allclose(rank.typicality(emb[perm]), fresh[perm])  # the memo, rows reordered
    assert len(rank._TYPICAL_MEMO) == 1
    moved = emb.copy()
    moved[0] += 50.0                                             # one clip far away: not stale
    assert np.allclose(rank.typicality(moved), rank._typicality(moved, rank.TYPICAL_K, 1024))
    assert rank.typicality(moved)[0] < 0.2 < fresh[0]
    for seed in range(2, 2 + rank.TYPICAL_MEMO_SIZE + 2):         # bounded
        rank.typicality(_clumps(50, seed))
    assert len(rank._TYPICAL_MEMO) == rank.TYPICAL_MEMO_SIZE
    dup = np.vstack([emb[:10], emb[:10]])                        # identical rows: same values
    t = rank.typicality(dup)
    assert np.allclose(t[:10], t[10:])


def test_a_vote_decodes_nothing_and_says_when_the_audio_is_gone(store, tmp_path, monkeypatch):
    q = AnnotationQueue(store, ScriptedModel(), QueueOptions(votes_needed=1, order="uncertainty"))
    q.add(tones(tmp_path / "in", 3))
    first = q.next("ana")

    def no_decoding(audio):
        raise AssertionError("a vote on a stored clip decoded its audio")
    monkeypatch.setattr("emodemo.store.media.ingest", no_decoding)
    cid = q.vote(first.id, "ana", "sad")
    rec = store.get(cid)
    assert (rec.media_sha256, rec.start, rec.end, rec.file_name, rec.queue_item_id) == (
        first.media_sha256, first.start, first.end, first.file_name, first.id)
    assert q.item(first.id).done
    with pytest.raises(StoreError, match="no longer in the media folder"):
        store.stored("f" * 64)
    second = q.next("ana")
    n = len(store.corrections())
    os.remove(second.media_path)                                 # someone cleaned the folder
    with pytest.raises(StoreError, match="no longer in the media folder"):
        q.vote(second.id, "ana", "happy")
    assert len(store.corrections()) == n                         # nothing half-stored


def test_progress_and_item_say_what_the_full_load_says(store, tmp_path):
    q = AnnotationQueue(store, ScriptedModel(), QueueOptions(votes_needed=2, order="uncertainty"))
    q.add(tones(tmp_path / "in", 5))
    ids = [it.id for it in q.items()]
    q.vote(ids[0], "ana", "happy")
    q.vote(ids[0], "bob", "happy")                               # done: two agree
    q.vote(ids[1], "ana", "happy")
    q.vote(ids[1], "bob", "sad")                                 # disagree: needs a third
    v = q.vote(ids[2], "ana", "sad")
    q.vote(ids[2], "cid", "sad")
    store.delete(v, by="ana")                                    # soft-deleted: one vote left
    q.vote(ids[3], "ana", "sad")
    q.vote(ids[3], "bob", "happy")
    q.vote(ids[3], "cid", "sad")                                 # disagreeing, but 3 votes: done
    items = {it.id: it for it in q.items()}
    prog = q.progress()
    assert (prog.done, prog.total) == (sum(it.done for it in items.values()), 5) == (2, 5)
    assert prog.per_annotator == {"ana": 3, "bob": 3, "cid": 2}
    for i in ids:
        assert q.item(i) == items[i]
    assert sorted(q.model_labels()) == sorted(it.model_label for it in items.values())
    with pytest.raises(StoreError, match="no queue item"):
        q.item(max(ids) + 1)


@pytest.mark.slow
def test_a_campaign_sized_queue_computes_typicality_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # no typicality on disk yet
    store = bench_queue.build_store(3000, tmp_path)
    calls = []
    real = rank._typicality
    monkeypatch.setattr(rank, "_typicality", lambda *a: calls.append(1) or real(*a))
    rank._TYPICAL_MEMO.clear()
    q = AnnotationQueue(store, options=QueueOptions(votes_needed=1))   # coverage, the default
    served = [q.next("ana")]
    for _ in range(3):
        served.append(bench_queue.one_clip(q, served[-1]))
    listed = q.items()
    assert len(calls) == 1                                       # once, for the whole session
    assert len({it.id for it in served}) == 4 and q.progress().done == 3
    rank._TYPICAL_MEMO.clear()                                   # the order from scratch
    assert [it.id for it in AnnotationQueue(store, options=QueueOptions(votes_needed=1)).items()] \
        == [it.id for it in listed]
    store.close()


def test_spread_tree_memo_gives_the_order_a_fresh_tree_gives(monkeypatch):
    emb, ids = _clumps(400, seed=3), np.arange(1000, 1400)
    covered = np.zeros(400, bool)
    covered[[5, 17, 200]] = True
    rank._SPREAD_MEMO.clear()
    first = rank.spread_order(emb, covered, 7, ids)
    calls = []
    real = rank.kmeans
    monkeypatch.setattr(rank, "kmeans", lambda *a, **k: calls.append(1) or real(*a, **k))
    covered[first[:10]] = True                                   # ten clips voted on since
    again = rank.spread_order(emb, covered, 7, ids)
    assert calls == [] and again == first[10:]                   # the memo: same order, no k-means
    perm = np.random.default_rng(0).permutation(400)             # rows in another order
    assert [perm[i] for i in rank.spread_order(emb[perm], covered[perm], 7, ids[perm])] == again
    rank._SPREAD_MEMO.clear()
    assert rank.spread_order(emb, covered, 7, ids) == again and calls    # rebuilt: the same
    assert rank.spread_order(emb, covered, 8, ids) != again              # another seed differs


def test_empty_and_one_clip_queues_are_ordered():
    """The memoised orders take an empty queue (no clips: shape (0, 0)) and a single clip."""
    empty = np.zeros((0, 0))
    assert rank.typicality(empty).shape == (0,)
    assert rank.coverage_order(empty, np.zeros(0, bool)) == []
    assert rank.spread_order(empty, np.zeros(0, bool), 0, []) == []
    one = np.ones((1, 7))
    assert rank.coverage_order(one, np.zeros(1, bool)) == [0]
    assert rank.spread_order(one, np.zeros(1, bool), 0, [5]) == [0]


def test_typicality_is_kept_on_disk_for_the_next_process(tmp_path, monkeypatch):
    """A large queue's typicality is written once to the cache (by content: any row order) and
    read back by a later process (here: the in-memory memo cleared and the computation broken);
    other clips get their own file; a cache that cannot be written is skipped."""
    from emodemo.annotate import memo
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(memo, "DISK_MIN_ROWS", 200)
    emb = _clumps(300, seed=5)
    rank._TYPICAL_MEMO.clear()
    fresh = rank.typicality(emb)
    files = list((tmp_path / "cache" / "emodemo" / "queue").glob("typicality-*.npy"))
    assert len(files) == 1
    rank._TYPICAL_MEMO.clear()
    monkeypatch.setattr(rank, "_typicality", lambda *a: (_ for _ in ()).throw(AssertionError("computed")))
    perm = np.random.default_rng(2).permutation(len(emb))
    assert np.allclose(rank.typicality(emb[perm]), fresh[perm])      # read back, rows reordered
    with pytest.raises(AssertionError, match="computed"):            # other clips: not on disk
        rank.typicality(_clumps(300, seed=6))
    monkeypatch.undo()
    (tmp_path / "ro").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    monkeypatch.setattr(memo, "DISK_MIN_ROWS", 200)
    rank._TYPICAL_MEMO.clear()
    assert np.allclose(rank.typicality(emb), fresh)                  # computed, nothing written


@pytest.mark.slow
def test_queue_next_in_a_new_process_reads_typicality_from_disk(tmp_path, monkeypatch):
    """`python -m emodemo queue next` twice (a 2,500-clip queue): the first process writes the
    typicality to the cache; the second serves by what it finds there. To see that it read it,
    the file is replaced by inverted values (typical <-> atypical) between the two runs: the
    second annotator gets the clip the coverage order gives with those, not with the real ones."""
    import json
    import subprocess
    store = bench_queue.build_store(2500, tmp_path)
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "emodemo", "queue", "next", "--db", f"sqlite:///{tmp_path / 'queue.db'}",
           "--media-dir", str(tmp_path / "media"), "--json", "--annotator"]
    first = subprocess.run(cmd + ["ana"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    (path,) = (cache / "emodemo" / "queue").glob("typicality-*.npy")

    def next_for_bo(cache_home) -> int:                 # what the serving order gives bo now
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
        rank._TYPICAL_MEMO.clear()
        ordered = AnnotationQueue(store).items()
        return next(it.id for it in ordered if it.leased_by is None and not it.done)
    real = next_for_bo(tmp_path / "empty")               # computed afresh
    t = np.load(path)
    np.save(path, t.max() + t.min() - t)
    inverted = next_for_bo(cache)
    assert inverted != real
    second = subprocess.run(cmd + ["bo"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["id"] == inverted != json.loads(first.stdout)["id"]
    store.close()


def test_queue_cli_loads_no_model_code():
    """`queue next/list/vote` run once per clip from a shell: importing the queue CLI and the
    CLI's quiet logging loads neither torch nor transformers (2 s a call); only `add` does."""
    import subprocess
    code = ("import sys, emodemo.cli as c, emodemo.annotate.cli; c.quiet_logging(); "
            "print(sorted(m for m in ('torch', 'transformers', 'emodemo.audio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
