"""Corpus adapters: "folder + labels.csv" corpora and the speaker-disjoint split, on tiny corpora of
numpy tones built in tmp_path (never ../shared/data)."""
import csv

import numpy as np
import pytest
import soundfile as sf

from emodemo.audio import load_audio
from emodemo.data import Item, corpus_of, folder, load_spec, speaker_split

SR = 16000


def make_corpus(root, speakers, emotions, per=2, text=True):
    """A folder corpus: one distinct tone per clip, labels.csv with file,speaker,emotion,text. The
    emotion sets the octave (150 Hz x 2^index), the speaker shifts it by 3 % per speaker index."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    t = np.arange(int(0.3 * SR)) / SR
    for s_i, spk in enumerate(speakers):
        for e_i, emo in enumerate(emotions):
            for k in range(per):
                name = f"{spk}_{emo}_{k}.flac"
                freq = 150 * 2 ** e_i * (1 + 0.03 * s_i) + 5 * k
                sf.write(root / name, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
                rows.append({"file": name, "speaker": spk, "emotion": emo,
                             "text": f"sentence {k} of {spk}" if text else ""})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "speaker", "emotion", "text"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "polish", ["SB0", "KD0", "MP0"], ["neutral", "happy", "sad"])


def test_folder_items_prefixed_stable_and_readable(corpus):
    items = folder(corpus)
    assert len(items) == 3 * 3 * 2
    assert {i.speaker for i in items} == {"polish-SB0", "polish-KD0", "polish-MP0"}
    assert {i.corpus for i in items} == {"polish"}
    first = next(i for i in items if i.id == "polish/SB0_happy_1")
    assert first.label == "happy" and first.transcript == "sentence 1 of SB0"
    # ids are stable across loads and unique
    assert [i.id for i in folder(corpus)] == [i.id for i in items]
    assert len({i.id for i in items}) == len(items)
    wave = load_audio(first.audio)
    assert wave.shape == (int(0.3 * SR),) and np.abs(wave).max() > 0.2


def test_folder_speaker_filters_accept_raw_and_prefixed_names(corpus):
    assert {i.speaker for i in folder(corpus, speakers=["SB0", "polish-KD0"])} == {"polish-SB0", "polish-KD0"}
    assert {i.speaker for i in folder(corpus, exclude_speakers=["MP0"])} == {"polish-SB0", "polish-KD0"}
    with pytest.raises(ValueError, match="no clips for speaker"):
        folder(corpus, speakers=["XX9"])


def test_folder_name_overrides_prefix(corpus):
    items = folder(corpus, name="nemo")
    assert items[0].speaker.startswith("nemo-") and items[0].id.startswith("nemo/")


def test_folder_bad_layouts_have_clear_messages(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        folder(tmp_path / "nowhere")
    bad = make_corpus(tmp_path / "bad", ["A"], ["neutral"], per=1)
    (bad / "labels.csv").write_text("file,speaker,emotion,text\nA_neutral_0.flac,A,calm,x\n")
    with pytest.raises(ValueError, match="line 2: emotion 'calm'"):
        folder(bad)
    (bad / "labels.csv").write_text("file,emotion\nA_neutral_0.flac,neutral\n")
    with pytest.raises(ValueError, match="missing column.*speaker"):
        folder(bad)


def test_empty_text_is_none(tmp_path):
    root = make_corpus(tmp_path / "ko", ["nea"], ["angry"], per=1, text=False)
    assert folder(root)[0].transcript is None


def test_load_spec_folder_and_named_corpora(corpus, tmp_path):
    items = load_spec(f"folder:{corpus}:speakers=SB0,KD0")
    assert {i.speaker for i in items} == {"polish-SB0", "polish-KD0"}
    items = load_spec(f"folder:{corpus}:exclude_speakers=SB0:name=pl")
    assert {i.speaker for i in items} == {"pl-KD0", "pl-MP0"}
    # a named corpus with its root elsewhere keeps its name as prefix
    ko = make_corpus(tmp_path / "somewhere", ["nea", "emb"], ["neutral", "angry"], per=1)
    items = load_spec(f"emotiontts-ko:root={ko}:speakers=emb")
    assert {i.speaker for i in items} == {"emotiontts-ko-emb"}
    assert corpus_of(items[0]) == "emotiontts-ko"
    # relabelling keeps speaker, id and corpus
    relabelled = load_spec(f"nemo:root={corpus}:speakers=MP0:as=neutral")
    assert {i.label for i in relabelled} == {"neutral"}
    assert {i.corpus for i in relabelled} == {"nemo"} and {i.speaker for i in relabelled} == {"nemo-MP0"}
    with pytest.raises(ValueError, match="unknown data spec"):
        load_spec("nosuchcorpus")


def test_corpus_of_falls_back_to_speaker_prefix():
    assert corpus_of(Item("x.wav", "happy", speaker="emotiontts-ko-nea")) == "emotiontts-ko"
    assert corpus_of(Item("x.wav", "happy", speaker="solo")) == "solo"


@pytest.fixture
def two_corpora(tmp_path):
    a = folder(make_corpus(tmp_path / "a", [f"s{k}" for k in range(10)], ["happy", "sad"], per=1))
    b = folder(make_corpus(tmp_path / "b", ["x", "y", "z"], ["angry"], per=3))
    return a + b


def test_speaker_split_disjoint_complete_and_per_corpus(two_corpora):
    parts = speaker_split(two_corpora, [0.6, 0.2, 0.2], seed=0)
    speakers = [{i.speaker for i in p} for p in parts]
    assert all(not (speakers[i] & speakers[j]) for i in range(3) for j in range(i + 1, 3))
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in two_corpora)
    # every part has speakers of both corpora; corpus a (10 speakers) splits 6/2/2
    for p in parts:
        assert {corpus_of(i) for i in p} == {"a", "b"}
    assert [len({s for s in sp if s.startswith("a-")}) for sp in speakers] == [6, 2, 2]
    assert [len({s for s in sp if s.startswith("b-")}) for sp in speakers] == [1, 1, 1]


def test_speaker_split_is_deterministic_and_seeded(two_corpora):
    ids = lambda parts: [sorted(i.id for i in p) for p in parts]  # noqa: E731
    assert ids(speaker_split(two_corpora, [0.5, 0.5], 3)) == ids(speaker_split(list(reversed(two_corpora)), [0.5, 0.5], 3))
    assert len({tuple(ids(speaker_split(two_corpora, [0.5, 0.5], s))[0]) for s in range(6)}) > 1


def test_speaker_split_rejects_bad_fractions(two_corpora):
    with pytest.raises(ValueError, match="fractions"):
        speaker_split(two_corpora, [0.0, 0.0])
    with pytest.raises(ValueError, match="fractions"):
        speaker_split(two_corpora, [1.0, -0.5])


def test_crema_d_and_emovo_specs_read_opus_and_cap_clips_per_speaker(tmp_path):
    import subprocess
    root = make_corpus(tmp_path / "flac", ["cremad_1001", "cremad_1002"], ["sad", "happy", "angry"], per=4)
    opus = tmp_path / "crema"
    (opus / "audio").mkdir(parents=True)
    rows = list(csv.DictReader(open(root / "labels.csv", encoding="utf-8")))
    for r in rows:                       # the shared copies are Opus: convert like them
        dst = opus / "audio" / r["file"].replace(".flac", ".opus")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(root / r["file"]), "-c:a", "libopus",
                        "-b:a", "40k", str(dst)], check=True)
        r["file"] = f"audio/{dst.name}"
    with open(opus / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "speaker", "emotion", "text"])
        w.writeheader()
        w.writerows(rows)
    items = load_spec(f"crema-d:root={opus}:speakers=cremad_1001")
    assert len(items) == 12 and {i.corpus for i in items} == {"crema-d"}
    assert {i.speaker for i in items} == {"crema-d-cremad_1001"}
    assert load_audio(items[0].audio).size > 0.25 * SR
    capped = load_spec(f"crema-d:root={opus}:max_per_speaker=5")
    per_spk = {s: [i.label for i in capped if i.speaker == s] for s in {i.speaker for i in capped}}
    assert all(len(v) == 5 and set(v) == {"sad", "happy", "angry"} for v in per_spk.values())   # spread over classes
    assert capped == load_spec(f"crema-d:root={opus}:max_per_speaker=5")                      # deterministic
    assert {i.corpus for i in load_spec(f"emovo:root={opus}")} == {"emovo"}


@pytest.mark.skipif(not (load_spec.__globals__["SHARED_DATA"] / "emovo").is_dir(), reason="shared data absent")
def test_shared_crema_d_and_emovo_corpora():
    emovo = load_spec("emovo")
    assert len(emovo) == 588 and len({i.speaker for i in emovo}) == 6 and len({i.label for i in emovo}) == 7
    crema = load_spec("crema-d:max_per_speaker=16")
    assert len({i.speaker for i in crema}) == 91 and all(i.audio.endswith(".opus") for i in crema[:5])
