"""The annotation queue (emodemo.annotate, contract C5) through its Python API and its CLI, on
SQLite and PostgreSQL: adding files / folders / zips / long recordings, the model's pre-labels,
the serving order (coverage of the clips' embeddings or uncertainty, then disagreement), leases
that give annotators working at once different clips and expire, votes that are corrections, skips,
progress, restarts, the migration of queues from before embeddings."""
from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SR, barrier_wait, espeak, run_threads
from emodemo.annotate import AnnotationQueue, QueueOptions
import emodemo
from emodemo.annotate.rank import EMBED_DIM, compact, coverage_order, hybrid_order, tally, uncertainty
from emodemo.errors import StoreError
from emodemo.recognizer import Prediction
from emodemo.store import CorrectionStore
from test_store import db_url  # noqa: F401  (the sqlite + PostgreSQL fixture)

EXAMPLES = ROOT / "data" / "examples"


class ScriptedModel:
    """A recognizer whose fused probabilities are set by the clip's length (1 s -> 0.9 happy,
    each further 0.5 s closer to 50/50), so the expected serving order is known."""

    def predict_wave(self, wav, transcript=None):
        steps = int(round((wav.size / SR - 1.0) / 0.5))
        p = max(0.5, 0.9 - 0.1 * steps)
        fused = {"happy": p, "sad": 1 - p}
        return Prediction(label="happy", fused=fused, audio=fused, text=None, transcript="",
                          bundle="scripted")


def tones(folder: Path, n: int) -> list[Path]:
    """n tone clips of 1, 1.5, 2 ... s (more uncertain as they get longer)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        t = np.arange(int((1.0 + 0.5 * i) * SR)) / SR
        p = folder / f"tone{i}.wav"
        sf.write(str(p), (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32), SR)
        out.append(p)
    return out


@pytest.fixture
def queue(db_url, tmp_path):  # noqa: F811
    store = CorrectionStore(db_url, media_dir=tmp_path / "media")
    q = AnnotationQueue(store, ScriptedModel(), QueueOptions(votes_needed=2, lease_seconds=60,
                                                             order="uncertainty"))
    yield q
    store.close()


def test_uncertainty_and_tally():
    assert uncertainty({"a": 0.9, "b": 0.1}) == pytest.approx(0.2)
    assert uncertainty({"a": 0.5, "b": 0.5}) == pytest.approx(1.0)
    assert uncertainty({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, "entropy") == pytest.approx(1.0)
    assert uncertainty({"a": 1.0, "b": 0.0}, "entropy") == pytest.approx(0.0)
    assert uncertainty(None) == 1.0
    votes = [dict(id=1, label="sad", annotator="a", annotator_account=None, created_at=None,
                  updated_at=None),
             dict(id=2, label="happy", annotator="b", annotator_account=None, created_at=None,
                  updated_at=None),
             dict(id=3, label="happy", annotator="a", annotator_account=None, created_at=None,
                  updated_at=None)]                       # a changed their mind: latest counts
    assert tally(votes) == ({"happy": 2}, 0.0)
    assert tally(votes[:2]) == ({"happy": 1, "sad": 1}, 0.5)


def test_serving_order_leases_votes_and_progress(queue, tmp_path):
    rep = queue.add(tones(tmp_path / "in", 4))
    assert (len(rep.added), rep.skipped, rep.files, rep.errors) == (4, 0, 4, [])
    assert queue.add([tmp_path / "in"]).skipped == 4             # a folder: all queued already
    items = queue.items()
    assert [it.file_name for it in items] == ["tone3.wav", "tone2.wav", "tone1.wav", "tone0.wav"]
    assert [round(it.priority, 2) for it in items] == [0.8, 0.6, 0.4, 0.2]  # most uncertain first
    assert items[0].probabilities == pytest.approx({"happy": 0.6, "sad": 0.4})
    assert items[0].model_label == "happy" and Path(items[0].media_path).is_file()

    # three annotators at once get three different clips, the most uncertain first
    a, b, c = (queue.next(n) for n in ("ana", "bob", "cid"))
    assert [a.file_name, b.file_name, c.file_name] == ["tone3.wav", "tone2.wav", "tone1.wav"]
    assert queue.next("ana").id == a.id                          # asking again: the same clip
    cid = queue.vote(a.id, "ana", "happy")
    rec = queue.store.get(cid)
    assert (rec.queue_item_id, rec.start, rec.end, rec.predicted_label, rec.file_name) == (
        a.id, a.start, a.end, "happy", "tone3.wav")
    assert queue.next("ana").file_name == "tone0.wav"            # a, b, c taken or voted
    queue.vote(a.id, "bob", "sad")                               # disagreement on tone3
    queue.vote(b.id, "bob", "sad")
    items = {it.file_name: it for it in queue.items()}
    assert items["tone3.wav"].votes == {"happy": 1, "sad": 1}
    assert items["tone3.wav"].disagreement == 0.5 and not items["tone3.wav"].done  # 3rd vote
    assert queue.items()[0].file_name == "tone3.wav"            # disagreement is served first
    assert queue.next("dee").file_name == "tone3.wav"
    queue.vote(a.id, "dee", "sad")
    assert queue.item(a.id).done and queue.items()[-1].id == a.id  # done: last in the list
    prog = queue.progress()
    assert (prog.done, prog.total) == (1, 4)
    assert prog.per_annotator == {"bob": 2, "ana": 1, "dee": 1}
    # votes are corrections: agreement and exports see them
    agree = {r.media_sha256: r for r in queue.store.agreement()}
    assert agree[a.media_sha256].labels == {"sad": 2, "happy": 1}
    assert queue.store.export(tmp_path / "out.jsonl") == 4


def test_leases_expire_skips_stick_and_deleted_votes_stop_counting(queue, tmp_path):
    queue.add(tones(tmp_path / "in", 2))
    now = [1000.0]
    queue.clock = lambda: now[0]
    first = queue.next("ana")
    assert queue.next("bob").id != first.id
    assert queue.next("cid") is None                             # both clips leased
    now[0] += 61                                                 # ana and bob walked away
    assert queue.next("cid").id == first.id
    queue.skip(first.id, "cid")                                  # cid passes: lease freed
    assert queue.next("cid").id != first.id
    assert queue.next("dee").id == first.id                      # others still get it
    v1 = queue.vote(first.id, "dee", "sad")
    queue.vote(first.id, "eve", "sad")
    assert queue.item(first.id).done
    queue.store.delete(v1, by="dee")                             # a soft-deleted vote ...
    it = queue.item(first.id)
    assert (it.votes, it.done) == ({"sad": 1}, False)            # ... stops counting
    with pytest.raises(StoreError, match="someone else"):
        queue.store.restore(v1, by="eve")
    queue.store.restore(v1, by="dee")
    assert queue.item(first.id).done
    with pytest.raises(StoreError, match="no queue item"):
        queue.vote(99999, "ana", "sad")
    with pytest.raises(StoreError, match="unknown label"):
        queue.vote(first.id, "ana", "bored")
    with pytest.raises(StoreError, match="annotator name"):
        queue.next("  ")


def test_queue_survives_a_restart(db_url, tmp_path):  # noqa: F811
    media = tmp_path / "media"
    with CorrectionStore(db_url, media_dir=media) as s:
        q = AnnotationQueue(s, ScriptedModel())
        q.add(tones(tmp_path / "in", 3))
        held = q.next("ana")
        q.vote(q.next("bob").id, "bob", "happy")
    with CorrectionStore(db_url, media_dir=media) as s:           # a new process, say
        q = AnnotationQueue(s, ScriptedModel())
        assert q.next("ana").id == held.id                       # still ana's
        assert sum(it.n_votes for it in q.items()) == 1
        assert len(q.items()) == 3


def _next_in_process(url, media, name, barrier, conn):
    store = CorrectionStore(url, media_dir=media)
    q = AnnotationQueue(store, ScriptedModel())
    barrier_wait(barrier)
    it = q.next(name)
    conn.send(None if it is None else it.id)
    store.close()


@pytest.mark.slow
def test_annotators_at_once_never_share_a_clip(db_url, tmp_path):  # noqa: F811
    """12 annotators ask at the same moment (8 threads on one store, as the app does, and 4
    processes with their own): 12 different clips, each leased to exactly its annotator."""
    media = tmp_path / "media"
    store = CorrectionStore(db_url, media_dir=media)
    q = AnnotationQueue(store, ScriptedModel())
    q.add(tones(tmp_path / "in", 14))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(12)
    pipes = [ctx.Pipe(duplex=False) for _ in range(4)]
    procs = [ctx.Process(target=_next_in_process, args=(db_url, str(media), f"p{i}", barrier, w))
             for i, (_, w) in enumerate(pipes)]
    for p in procs:
        p.start()
    got = {}

    def annotator(i):
        barrier_wait(barrier)
        got[f"t{i}"] = q.next(f"t{i}").id

    errors = run_threads(annotator, 8, procs, timeout=120)
    assert not errors, errors
    for i, (r, _) in enumerate(pipes):
        got[f"p{i}"] = r.recv()
    assert [p.exitcode for p in procs] == [0] * 4
    assert None not in got.values() and len(set(got.values())) == 12
    leases = {it.id: it.leased_by for it in q.items()}
    assert all(leases[item] == name for name, item in got.items())
    store.close()


@pytest.mark.slow
def test_zip_and_long_recording_with_the_shipped_model(recognizer, store, tmp_path):
    """Real audio, the shipped model: committed clips in a zip (members with hostile paths), a
    long espeak recording cut at its pauses; every clip pre-labelled with fused probabilities."""
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLES / "angry_actor17.flac", "../../escape/angry.flac")
        zf.write(EXAMPLES / "sad_actor19.flac", "nested/sad.flac")
        zf.writestr("notes.txt", "not audio")
    parts = [espeak(t, tmp_path / f"s{i}.wav") for i, t in enumerate([
        "Good morning everyone, thank you for coming to the meeting today.",
        "I am absolutely furious about what happened with the budget last week.",
        "Still, I am sure that together we can fix it before the end of the month."])]
    gap = np.zeros(SR, dtype=np.float32)
    long = np.concatenate([x for p in parts for x in (sf.read(str(p), dtype="float32")[0], gap)]
                          * 2)
    sf.write(str(tmp_path / "meeting.wav"), long, SR)
    q = AnnotationQueue(store, recognizer, QueueOptions(transcribe=False, max_len=8.0,
                                                        order="uncertainty"))
    rep = q.add([archive, tmp_path / "meeting.wav", tmp_path / "missing.wav"])
    assert rep.files == 3 and len(rep.errors) == 1 and "missing.wav" in rep.errors[0]
    items = q.items()
    names = [it.file_name for it in items]
    assert "batch.zip/../../escape/angry.flac" in names and "batch.zip/nested/sad.flac" in names
    assert not (tmp_path.parent / "escape").exists()
    segs = sorted((it for it in items if it.file_name == "meeting.wav"), key=lambda it: it.start)
    assert len(segs) >= 3 and all(it.end - it.start <= 8.0 + 1e-6 for it in segs)
    assert all(b.start >= a.end - 1e-6 for a, b in zip(segs, segs[1:]))  # no overlaps
    for it in items:
        assert set(it.probabilities) == set(recognizer.labels)
        assert sum(it.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert it.model_label == max(it.probabilities, key=it.probabilities.get)
        assert it.priority == pytest.approx(uncertainty(it.probabilities), abs=1e-6)
        assert len(it.embedding) == EMBED_DIM and np.isfinite(it.embedding).all()
        assert "embedding" not in it.to_dict()
    assert [it.priority for it in items] == sorted((it.priority for it in items), reverse=True)
    # the embedding is the head's input, projected: the same clip gives the same numbers, and
    # the probabilities of that pass are the audio branch's own
    wav = emodemo.audio.load_audio(EXAMPLES / "sad_actor19.flac")
    p, feats = recognizer.audio_embedding(wav)
    assert p == pytest.approx(recognizer.audio_proba(wav), abs=1e-5)
    [sad] = [it for it in items if it.file_name == "batch.zip/nested/sad.flac"]
    assert sad.embedding == pytest.approx(compact(feats), abs=1e-4)
    cover = AnnotationQueue(store, None)                              # the default order
    assert {it.id for it in cover.items()} == {it.id for it in items}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emodemo", "queue", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_cli_add_list_next_vote_progress(tmp_path):
    """`python -m emodemo queue ...` as a person types it, with the shipped model and its ASR."""
    db = ["--db", f"sqlite:///{tmp_path / 'q.db'}"]
    speech = espeak("I can't believe you did this to me, I am so angry.", tmp_path / "angry.wav")
    r = _cli("add", str(speech), str(EXAMPLES / "happy_actor18.flac"), *db)
    assert r.returncode == 0 and "queued 2 clips from 2 files" in r.stdout, r.stderr
    r = _cli("list", *db, "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [set(row) >= {"file", "start", "end", "priority", "model_label", "votes"}
            for row in rows] == [True, True]
    assert rows[0]["priority"] >= rows[1]["priority"]
    first = json.loads(_cli("next", *db, "--annotator", "ana", "--json").stdout)
    assert first["file"] == rows[0]["file"] and first["leased_by"] == "ana"
    second = json.loads(_cli("next", *db, "--annotator", "bob", "--json").stdout)
    assert second["id"] != first["id"]
    r = _cli("vote", str(first["id"]), "angry", *db, "--annotator", "ana")
    assert r.returncode == 0 and "stored correction" in r.stdout
    r = _cli("vote", str(first["id"]), "angry", *db, "--annotator", "ana")   # double submit
    assert "(duplicate)" in r.stdout
    prog = json.loads(_cli("progress", *db, "--json").stdout)
    assert prog == {"done": 0, "total": 2, "per_annotator": {"ana": 1}}
    r = _cli("vote", "12345", "angry", *db, "--annotator", "ana")
    assert r.returncode == 2 and r.stderr.startswith("error: no queue item") and \
        "Traceback" not in r.stderr
    with CorrectionStore(f"sqlite:///{tmp_path / 'q.db'}") as s:     # the ASR's transcript
        [rec] = s.corrections()
        assert rec.transcript_shown and rec.label == "angry"


class TwoLabelModel(ScriptedModel):
    """The two shortest clips are confidently "sad", the rest more and more unsure "happy"."""

    def predict_wave(self, wav, transcript=None):
        pred = super().predict_wave(wav, transcript)
        if wav.size / SR < 1.75:
            fused = {"sad": pred.fused["happy"], "happy": pred.fused["sad"]}
            pred = Prediction(label="sad", fused=fused, audio=fused, text=None, transcript="")
        return pred


def test_balance_labels_serves_every_predicted_label_in_turn(store, tmp_path):
    q = AnnotationQueue(store, TwoLabelModel(), QueueOptions(votes_needed=1, order="uncertainty"))
    q.add(tones(tmp_path / "in", 5))
    assert [it.file_name[4] for it in q.items()] == ["4", "3", "2", "1", "0"]   # uncertainty
    balanced = AnnotationQueue(store, None, QueueOptions(votes_needed=1, order="uncertainty",
                                                         balance_labels=True))
    assert [it.file_name[4] for it in balanced.items()] == ["4", "1", "3", "0", "2"]
    assert [balanced.next(n).file_name[4] for n in ("a", "b", "c")] == ["4", "1", "3"]
    balanced.vote(balanced.next("a").id, "a", "sad")                  # done: goes last
    assert balanced.items()[-1].file_name == "tone4.wav"
    # turns carry over between calls: a "happy" clip was voted on, so "sad" clips come first
    assert balanced.next("d").file_name == "tone0.wav"          # tone1, tone3 are leased


class ClusterModel(ScriptedModel):
    """Tones 0-5 are one dense cluster of embeddings the model is unsure about (margin 0.1),
    tones 6-7 a second, small cluster it is sure about (margin 0.9)."""

    def audio_embedding(self, wav):
        i = int(round((wav.size / SR - 1.0) / 0.5))
        centre = np.zeros(EMBED_DIM) if i < 6 else np.full(EMBED_DIM, 5.0)
        p = np.array([0.55, 0.45]) if i < 6 else np.array([0.95, 0.05])
        return p, centre + 0.01 * i

    def predict_wave(self, wav, transcript=None, p_audio=None):
        fused = {"happy": float(p_audio[0]), "sad": float(p_audio[1])}
        return Prediction(label="happy", fused=fused, audio=fused, text=None, transcript="",
                          bundle="cluster")


def test_coverage_order_is_anytime_and_spreads_over_clusters():
    rng = np.random.default_rng(0)
    emb = np.r_[rng.normal(0, 0.1, (20, 3)), rng.normal(4, 0.1, (4, 3)), [[9.0, 9, 9]]]
    order = coverage_order(emb, np.zeros(len(emb), bool))
    assert sorted(order) == list(range(len(emb)))
    assert order[0] < 20                        # the most typical clip opens: the big cluster
    assert 24 in order[1:3] and any(20 <= i < 24 for i in order[1:3])   # then the far ones
    covered = np.zeros(len(emb), bool)
    covered[:20] = True                         # the big cluster is voted on already
    assert 20 <= coverage_order(emb[:24], covered[:24])[0] < 24
    weight = np.ones(len(emb))
    weight[24] = 0.0                            # a weight can hold a clip back
    assert 24 not in coverage_order(emb, np.zeros(len(emb), bool), weight)[:10]


def test_coverage_serves_both_clusters_first_with_leases_and_votes(db_url, tmp_path):  # noqa: F811
    """Coverage order (over the embeddings here; over the probabilities, the default, in the
    next test): the first clips served cover both clusters although one is what the model is
    sure about (uncertainty order serves the unsure cluster first); two annotators at once still
    get different clips, and a clip with a disagreeing vote comes before fresh ones."""
    with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
        q = AnnotationQueue(store, ClusterModel(), QueueOptions(votes_needed=2, space="embedding"))
        q.add(tones(tmp_path / "in", 8))
        cluster = {f"tone{i}.wav": "A" if i < 6 else "B" for i in range(8)}
        assert all(len(it.embedding) == EMBED_DIM for it in q.items())
        assert {cluster[it.file_name] for it in q.items()[:2]} == {"A", "B"}
        unsure = AnnotationQueue(store, None, QueueOptions(order="uncertainty"))
        assert {cluster[it.file_name] for it in unsure.items()[:6]} == {"A"}
        a, b = q.next("ana"), q.next("bob")
        assert a.id != b.id and {cluster[a.file_name], cluster[b.file_name]} == {"A", "B"}
        assert q.next("ana").id == a.id                              # her lease holds
        q.vote(a.id, "ana", "happy")
        q.vote(b.id, "bob", "sad")
        c = q.next("cid")
        assert c.id == a.id                        # started clips (one vote of two) come first
        q.vote(c.id, "cid", "sad")                 # disagreement: a third vote is needed
        assert q.items()[0].id == a.id and q.item(a.id).disagreement == 0.5
        fresh = [it for it in q.items() if it.n_votes == 0]
        assert len(fresh) == 6 and q.next("dee").id in (a.id, b.id)


def test_default_coverage_spreads_over_probabilities(queue, tmp_path):
    """The default: coverage of the probability vectors (also what space="embedding" falls back
    to for clips queued before migration 0005, or by a model without embeddings)."""
    queue.add(tones(tmp_path / "in", 4))
    assert all(it.embedding is None for it in queue.items())
    for space in ("probabilities", "embedding"):
        cover = AnnotationQueue(queue.store, None, QueueOptions(space=space))
        assert [it.id for it in cover.items()] == [it.id for it in AnnotationQueue(
            queue.store, None).items()]
    cover = AnnotationQueue(queue.store, None, QueueOptions(votes_needed=2))
    order = [it.file_name for it in cover.items()]
    assert sorted(order) == [f"tone{i}.wav" for i in range(4)]
    assert {order[0], order[1]} & {"tone0.wav", "tone3.wav"}   # an end of the range is reached
    assert cover.next("ana").file_name == order[0]


def test_default_coverage_with_two_clusters_of_probabilities(store, tmp_path):
    """Default options: 6 clips the model calls happy/sad 55/45, 2 it calls 95/5 happy; the
    first two served are one of each (uncertainty order would serve the six unsure ones)."""
    q = AnnotationQueue(store, ClusterModel(), QueueOptions(votes_needed=1))
    q.add(tones(tmp_path / "in", 8))
    unsure = {f"tone{i}.wav" for i in range(6)}
    first = [q.next(n).file_name for n in ("ana", "bob")]
    assert len(set(first) & unsure) == 1
    with pytest.raises(Exception, match="space must be"):
        QueueOptions(space="pixels")


def test_hybrid_order_floor_uncertainty_and_determinism():
    """The "hybrid" order (rank.hybrid_order): every predicted label gets its floor of clips first
    (although one label's clips are few and certain), then uncertain clips beat certain ones of
    the same typicality, every clip is ordered once, and the same input gives the same order."""
    rng = np.random.default_rng(1)
    emb = np.r_[rng.normal(0, 0.1, (30, 3)), rng.normal(3, 0.1, (30, 3)), rng.normal(6, 0.1, (5, 3))]
    labels = ["a"] * 30 + ["b"] * 30 + ["c"] * 5
    unc = np.r_[np.full(15, 0.9), np.full(15, 0.1), np.full(30, 0.5), np.full(5, 0.05)]
    none = np.zeros(len(emb), bool)
    order = hybrid_order(emb, none, unc, labels, floor=2)
    assert sorted(order) == list(range(len(emb)))
    assert sorted(labels[i] for i in order[:6]) == ["a", "a", "b", "b", "c", "c"]
    assert order == hybrid_order(emb, none, unc, labels, floor=2)
    first_a = [i for i in order if labels[i] == "a"][:6]
    assert all(i < 15 for i in first_a)                 # label a's unsure half goes first
    plain = coverage_order(emb, none)
    assert sum(labels[i] == "c" for i in plain[:6]) <= 1 < 2    # coverage alone: no floor
    covered = none.copy()
    covered[[30, 31, 60, 61]] = True                    # b and c have their floor already
    assert {labels[i] for i in hybrid_order(emb, covered, unc, labels, floor=2)[:2]} == {"a"}
    assert hybrid_order(emb, none, unc, [None] * len(emb), floor=2)[0] < 15   # no labels: no floor


def test_hybrid_is_an_order_of_the_queue(store, tmp_path):
    """QueueOptions(order="hybrid") serves fresh clips in rank.hybrid_order of their probability
    vectors, priorities (uncertainty) and predicted labels: an unsure clip first (6 clips at
    55/45, 2 sure ones at 95/5, all predicted happy), and the order follows votes."""
    q = AnnotationQueue(store, ClusterModel(), QueueOptions(votes_needed=1, order="hybrid"))
    q.add(tones(tmp_path / "in", 8))
    items = sorted(q.items(), key=lambda it: (-it.priority, it.id))     # the queue's base order
    emb = np.array([[it.probabilities["happy"], it.probabilities["sad"]] for it in items])
    expect = hybrid_order(emb, np.zeros(8, bool), [it.priority for it in items],
                          [it.model_label for it in items])
    assert [it.id for it in q.items()] == [items[i].id for i in expect]
    first = q.next("ana")
    assert first.file_name in {f"tone{i}.wav" for i in range(6)}
    q.vote(first.id, "ana", "happy")
    covered = np.array([it.id == first.id for it in items])
    assert q.next("bob").id == items[hybrid_order(emb, covered, [it.priority for it in items],
                                                  [it.model_label for it in items])[0]].id
    with pytest.raises(Exception, match="order must be"):
        QueueOptions(order="random")
