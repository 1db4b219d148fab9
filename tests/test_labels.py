"""The one rule for labels, clips and votes (emodemo.labels), and the store agreeing with it."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    import emodemo  # noqa: F401
except ImportError:  # running `pytest` without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo.labels import LABELS, NONE_LABEL, Voter, clip_key, normalize_label, vote
from emodemo.store import CorrectionStore

SR = 16000
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def rec(i: int, label: str, annotator=None, sha="a" * 64, start=None, end=None, duration=2.0,
        account=None, updated=None) -> dict:
    """A correction record as the store hands it out (created one minute apart)."""
    created = T0 + timedelta(minutes=i)
    return dict(id=i, media_sha256=sha, start=start, end=end, duration=duration, label=label,
                annotator=annotator, annotator_account=account, created_at=created,
                updated_at=created if updated is None else T0 + timedelta(minutes=updated))


def test_label_names_and_normalize_label():
    assert LABELS == ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert NONE_LABEL == "none"
    assert normalize_label("  Happy ") == "happy" and normalize_label(b"SAD") == "sad"
    assert normalize_label("NONE") == "none"
    for bad in ("furious", "", None, 3, "happy,sad"):
        assert normalize_label(bad) is None
    assert normalize_label("calm", ["Calm", "Excited"]) == "Calm"     # canonical spelling
    assert normalize_label("happy", ["Calm", "Excited"]) is None
    assert normalize_label("none", ["Calm"]) == "none"                # always accepted


def test_clip_key_rounds_to_10ms_and_a_whole_file_span_is_no_span():
    sha = "b" * 64
    assert clip_key(sha, None, None, 3.0) == (sha, None, None)
    assert clip_key(sha, 0.0, 3.0, 3.0) == (sha, None, None)          # the whole file
    assert clip_key(sha, 0.002, 2.996, 3.0) == (sha, None, None)      # within 10 ms of it
    assert clip_key(sha, 0.0, None, 3.0) == (sha, None, None)
    assert clip_key(sha, 1.2341, 2.0, 3.0) == clip_key(sha, 1.2299, 2.004, 3.0) == (sha, 1.23, 2.0)
    assert clip_key(sha, 0.0, 1.5, 3.0) == (sha, None, 1.5)           # a segment stays one
    assert clip_key(sha, 1.5, 3.0, 3.0) == (sha, 1.5, None)
    assert clip_key(sha, 0.0, 2.9, None) == (sha, None, 2.9)          # duration unknown


def test_vote_one_per_voter_latest_wins_ties_reported():
    sha2 = "c" * 64
    clips = vote([
        rec(1, "sad", "ann", updated=10),          # edited at minute 10: ann's latest word
        rec(2, "sad", "bob"),
        rec(3, "Sad", "bob"),                      # repeated: bob still counts once
        rec(4, "angry", "cid"),
        rec(5, "happy", "cid"),                    # cid changed their mind: latest counts
        rec(6, "angry", "ann", start=0.0, end=2.0),  # whole-file span: the same clip as no span
        rec(7, "happy", "dee", start=0.0, end=1.0),  # a segment: another clip
        rec(8, "happy", sha=sha2), rec(9, "sad", sha=sha2),   # anonymous: one voter each
    ])
    assert [c.key for c in clips] == [("a" * 64, None, None), ("a" * 64, None, 1.0),
                                      (sha2, None, None)]
    a, seg, c = clips
    assert a.votes == {Voter("name", "ann"): "sad", Voter("name", "bob"): "sad",
                       Voter("name", "cid"): "happy"}
    assert (a.n_annotators, a.n_corrections, a.tie) == (3, 6, False)
    assert a.counts == {"sad": 2, "happy": 1} and a.majority_label == "sad"
    assert a.agreement == pytest.approx(2 / 3) and seg.n_annotators == 1
    assert (c.n_annotators, c.tie, c.leaders) == (2, True, ("happy", "sad"))
    assert c.majority_label == "happy"         # a tie: the alphabetically first leader
    assert {str(v) for v in c.votes} == {"(anonymous #8)", "(anonymous #9)"}

    clips = vote([rec(1, "happy", "ann"), rec(2, "happy", "bob"), rec(3, "sad", "cid"),
                  rec(4, "none", "dee")])
    assert clips[0].counts == {"happy": 2, "none": 1, "sad": 1}
    assert (clips[0].majority_label, clips[0].majority_count, clips[0].tie) == ("happy", 2, False)


def test_vote_counts_accounts_not_typed_names():
    clips = vote([
        rec(1, "happy", "ana", account="ana-hf"),
        rec(2, "sad", "someone else", account="ana-hf"),   # same account, another typed name
        rec(3, "angry", "ana", account="bob-hf"),          # same typed name, another account
        rec(4, "angry", "ana"),                            # typed only: not the account "ana"
        rec(5, "angry", "ana-hf"),                         # a typed name never becomes an account
    ])
    (clip,) = clips
    assert clip.votes == {Voter("account", "ana-hf"): "sad", Voter("account", "bob-hf"): "angry",
                          Voter("name", "ana"): "angry", Voter("name", "ana-hf"): "angry"}
    assert clip.majority_label == "angry" and clip.majority_count == 3


def _tone(path: Path, freq: float, seconds: float = 2.0) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def test_store_agreement_and_labels_vote_agree(tmp_path):
    """The History tab's table (store.agreement) and fine-tuning's rule (labels.vote over the
    stored records) give the same clips, votes, majorities and ties on overlapping annotations."""
    a, b, c = (_tone(tmp_path / f"{n}.wav", f) for n, f in (("a", 220), ("b", 330), ("c", 440)))
    with CorrectionStore(f"sqlite:///{tmp_path / 'db.sqlite'}", media_dir=tmp_path / "m") as s:
        s.add(a, "happy", annotator="ann")
        s.add(a, "sad", annotator="bob", start=0.0, end=2.0)     # whole file = the same clip
        s.add(a, "SAD", annotator="cid", start=0.001, end=1.998)   # ... within 10 ms of it
        first = s.add(a, "angry", annotator="bob", start=0.0, end=1.0)
        s.add(a, "angry", annotator="ann", start=0.004, end=1.003)   # the same segment, rounded
        s.add(a, "happy", annotator="cid", start=0.0, end=1.0)
        s.update(first, label="happy")                           # bob's latest word on it
        s.add(b, "neutral", annotator="ann")
        s.add(b, "neutral", annotator="ann")                     # one voter
        s.add(b, "happy", annotator="ann", account="eve-hf")     # an account: another voter
        s.add(b, "neutral", annotator="eve", account="eve-hf")   # ... who changed their mind
        s.add(c, "fearful")
        s.add(c, "surprised")                                    # anonymous: a tie
        s.add(c, "fearful", annotator="dee", start=0.5, end=1.5)
        table = {(r.media_sha256, r.start, r.end): r for r in s.agreement(min_annotators=1)}
        clips = {v.key: v for v in vote(s.corrections(), labels=s.labels)}

    assert set(table) == set(clips) and len(clips) == 5
    for key, clip in clips.items():
        row = table[key]
        assert (row.n_annotators, row.n_corrections, row.labels, row.majority_label, row.tie,
                row.agreement) == (clip.n_annotators, clip.n_corrections, clip.counts,
                                   clip.majority_label, clip.tie, clip.agreement), key
    sha_a = next(k[0] for k, r in table.items() if r.n_corrections == 3 and r.end is None)
    whole, segment = table[(sha_a, None, None)], table[(sha_a, None, 1.0)]
    assert whole.labels == {"sad": 2, "happy": 1} and not whole.tie
    assert segment.labels == {"happy": 2, "angry": 1} and segment.majority_label == "happy"
    assert [r.tie for r in table.values()].count(True) == 1
    row_b = next(r for r in table.values() if "neutral" in r.labels)
    assert (row_b.n_annotators, row_b.labels) == (2, {"neutral": 2})


def test_one_label_rule_and_one_length_message_for_app_and_store():
    """The app's form (analysis.check_label) and the store (validate.LabelSet) accept the same
    labels and say the same thing about a wrong one; so for text over its length limit."""
    from emodemo.analysis import Limits, check_label, check_texts
    from emodemo.errors import EmodemoError, StoreError
    from emodemo.labels import NONE_LABEL, normalize_label, unknown_label
    from emodemo.store.validate import LabelSet, clean_field
    from emodemo.textnorm import text_too_long
    labs = ["happy", "sad"]
    for given in (" Happy", "None of these", "none", "SAD"):
        assert check_label(given, labs) == LabelSet(labs).check(given) == normalize_label(given, labs)
    assert normalize_label("none of these", labs) == NONE_LABEL
    want = "unknown label 'joy'; expected one of happy, sad, or “none of these”"
    assert unknown_label("joy", labs) == want
    with pytest.raises(EmodemoError) as app:
        check_label("joy", labs)
    with pytest.raises(StoreError) as store:
        LabelSet(labs).check("joy")
    assert str(app.value) == str(store.value) == want
    assert text_too_long("note", 5, 5) is None
    assert text_too_long("note", 6, 5) == "note is too long (6 characters; the limit is 5)"
    with pytest.raises(StoreError, match=r"^note is too long \(6 characters; the limit is 5\)$"):
        clean_field("x" * 6, "note", 5)
    with pytest.raises(EmodemoError, match=r"^The note is too long \(6 characters; the limit is 5\)\.$"):
        check_texts(Limits(max_text_chars=5), note="x" * 6)
