"""Datasets as lists of `Item`s: (audio, label, transcript, speaker). Adapters for RAVDESS,
GoEmotions, IEMOCAP, a generic CSV manifest and "folder + labels.csv" corpora (nEMO, emotiontts-ko,
CREMA-D, EMOVO),
plus a deterministic speaker-disjoint split."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import DataError
from .labels import LABELS as _LABELS
from .settings import read_env

LABELS = list(_LABELS)                 # the seven names, defined once in emodemo.labels

RAVDESS_EMOTIONS = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fearful", "07": "disgust", "08": "surprised"}
RAVDESS_SENTENCES = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
GOEMOTIONS_EKMAN = {"anger": "angry", "disgust": "disgust", "fear": "fearful", "joy": "happy",
                    "neutral": "neutral", "sadness": "sad", "surprise": "surprised"}
SHARED_DATA = Path(read_env("data") or Path(__file__).resolve().parents[2] / "shared" / "data")


@dataclass
class Item:
    audio: Optional[str]              # path to an audio file (None for text-only items)
    label: str
    transcript: Optional[str] = None
    speaker: Optional[str] = None
    labels: tuple[str, ...] = ()      # all labels of a multi-label item (text data)
    id: str = ""
    corpus: str = ""                  # which corpus the item came from ('ravdess', 'nemo', ...)


def ravdess(root: str | Path | None = None, actors: Optional[Iterable[int]] = None) -> list[Item]:
    """RAVDESS speech (`Actor_XX/MM-VV-EE-II-SS-RR-AA.*`); calm is mapped to neutral."""
    root = Path(root) if root is not None else SHARED_DATA / "ravdess"   # SHARED_DATA read at call time
    keep = None if actors is None else {int(a) for a in actors}
    items = []
    for path in sorted(root.glob("Actor_*/*")):
        if path.suffix.lower() not in {".wav", ".flac"}:
            continue
        parts = path.stem.split("-")
        if len(parts) != 7 or parts[2] not in RAVDESS_EMOTIONS:
            continue
        actor = int(parts[6])
        if keep is not None and actor not in keep:
            continue
        items.append(Item(str(path), RAVDESS_EMOTIONS[parts[2]], RAVDESS_SENTENCES.get(parts[4]),
                          f"ravdess-{actor:02d}", id=path.stem, corpus="ravdess"))
    return items


def goemotions(split: str = "train", root: str | Path | None = None) -> list[Item]:
    """GoEmotions (Ekman taxonomy) rows as text-only items; `labels` keeps every label of a row."""
    root = Path(root) if root is not None else SHARED_DATA / "goemotions"
    names = (root / "labels.txt").read_text().split()
    items = []
    with open(root / f"{split}.tsv", newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 2:
                continue
            labs = tuple(dict.fromkeys(GOEMOTIONS_EKMAN[names[int(i)]] for i in row[1].split(",")))
            items.append(Item(None, labs[0], row[0], labels=labs, id=row[2] if len(row) > 2 else ""))
    return items


def manifest(path: str | Path) -> list[Item]:
    """A CSV manifest with header `path,label[,transcript][,speaker]`; relative paths are resolved
    against the CSV's folder."""
    path = Path(path)
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            audio = Path(row["path"])
            if not audio.is_absolute():
                audio = path.parent / audio
            items.append(Item(str(audio), row["label"].strip(), row.get("transcript") or None,
                              row.get("speaker") or None, id=str(row["path"])))
    return items


# ---- "folder + labels.csv" corpora (nEMO, emotiontts-ko, your own) ------------------------
# name -> folder under SHARED_DATA (CREMA-D and EMOVO audio is Opus, which soundfile decodes)
FOLDER_CORPORA = {"nemo": "nemo", "emotiontts-ko": "emotiontts-ko", "crema-d": "crema-d", "emovo": "emovo"}


def folder(root: str | Path, speakers: Optional[Iterable[str]] = None,
           exclude_speakers: Optional[Iterable[str]] = None, name: Optional[str] = None,
           max_per_speaker: Optional[int] = None) -> list[Item]:
    """A corpus laid out as a folder with `labels.csv` (header `file,speaker,emotion,text`; `file`
    relative to the folder, `emotion` one of `LABELS`).

    `name` (default: the folder's name) prefixes every speaker (`nemo-SB0`) and id (`nemo/SB0_x`),
    so speakers of different corpora never collide and ids stay stable. `speakers` keeps only those
    speakers, `exclude_speakers` drops them (raw `SB0` or prefixed `nemo-SB0` both work).
    `max_per_speaker` keeps at most that many clips of each speaker (a seeded draw spread over
    their classes: many voices matter more than many clips of one voice).
    """
    root = Path(root)
    name = name or root.name
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{root}: no labels.csv (expected columns file,speaker,emotion,text)")

    def norm(spk: Iterable[str] | None) -> set[str] | None:
        return None if spk is None else {s.removeprefix(f"{name}-") for s in spk}
    keep, drop = norm(speakers), norm(exclude_speakers) or set()
    items = []
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "speaker", "emotion"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(sorted(missing))}")
        for n, row in enumerate(reader, start=2):
            spk, label = row["speaker"].strip(), row["emotion"].strip()
            if (keep is not None and spk not in keep) or spk in drop:
                continue
            if label not in LABELS:
                raise DataError(f"{table}, line {n}: emotion {label!r} is not one of {', '.join(LABELS)}")
            rel = Path(row["file"].strip())
            items.append(Item(str(root / rel), label, (row.get("text") or "").strip() or None,
                              f"{name}-{spk}", id=f"{name}/{rel.with_suffix('').as_posix()}", corpus=name))
    if keep is not None:
        unknown = keep - {i.speaker.removeprefix(f"{name}-") for i in items}
        if unknown:
            raise DataError(f"{name}: no clips for speaker(s) {', '.join(sorted(unknown))}")
    return items if max_per_speaker is None else _cap_per_speaker(items, max_per_speaker)


def _cap_per_speaker(items: list[Item], n: int) -> list[Item]:
    """At most `n` items per speaker: each speaker's items shuffled (seeded by the speaker) within
    each class, then taken round-robin over the classes; input order kept."""
    import random
    by_spk: dict[str, dict[str, list[Item]]] = {}
    for it in items:
        by_spk.setdefault(it.speaker or "", {}).setdefault(it.label, []).append(it)
    chosen: set[int] = set()
    for spk, classes in by_spk.items():
        queues = []
        for lab in sorted(classes):
            q = list(classes[lab])
            random.Random(f"{spk}:{lab}").shuffle(q)
            queues.append(q)
        picked: list[Item] = []
        while len(picked) < n and any(queues):
            for q in queues:
                if q and len(picked) < n:
                    picked.append(q.pop(0))
        chosen |= {id(i) for i in picked}
    return [i for i in items if id(i) in chosen]


def corpus_of(item: Item) -> str:
    """The corpus an item belongs to: `Item.corpus`, else the part of its speaker before the last '-'."""
    if item.corpus:
        return item.corpus
    return (item.speaker or "").rpartition("-")[0] or (item.speaker or "")


def speaker_split(items: Sequence[Item], fractions: Sequence[float], seed: int = 0) -> list[list[Item]]:
    """Split items into len(fractions) speaker-disjoint parts, deterministically.

    Each corpus is split on its own (its speakers sorted, then shuffled with a seed derived from
    `seed` and the corpus name), so every part holds speakers of every corpus; a part with a
    fraction > 0 gets at least one speaker of a corpus when that corpus has enough speakers.
    Items without a speaker count as one speaker each (their id).
    """
    import random
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataError(f"fractions must be non-negative and not all zero: {list(fractions)}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    by_corpus: dict[str, list[str]] = {}
    for it in items:
        spk = it.speaker or f"item:{it.id}"
        by_corpus.setdefault(corpus_of(it), [])
        if spk not in by_corpus[corpus_of(it)]:
            by_corpus[corpus_of(it)].append(spk)
    part_of: dict[str, int] = {}
    for corpus, spks in sorted(by_corpus.items()):
        spks = sorted(spks)
        random.Random(f"{seed}:{corpus}").shuffle(spks)
        counts = _apportion(len(spks), fr)
        start = 0
        for k, c in enumerate(counts):
            for spk in spks[start:start + c]:
                part_of[spk] = k
            start += c
    parts: list[list[Item]] = [[] for _ in fr]
    for it in items:
        parts[part_of[it.speaker or f"item:{it.id}"]].append(it)
    return parts


def _apportion(n: int, fractions: Sequence[float]) -> list[int]:
    """n speakers over parts in proportion to fractions (largest remainder), at least one per part
    with a positive fraction while speakers last (taken from the largest part)."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: (counts[k] - raw[k], k))[:n - sum(counts)]:
        counts[k] += 1
    for k, f in enumerate(fractions):
        if f > 0 and counts[k] == 0:
            big = max(range(len(counts)), key=lambda j: counts[j])
            if counts[big] > 1:
                counts[big] -= 1
                counts[k] += 1
    return counts


# ---- IEMOCAP ------------------------------------------------------------------------------
IEMOCAP_4 = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
IEMOCAP_LABELS = ["neutral", "happy", "sad", "angry"]


def iemocap(root: str | Path, sessions: Optional[Iterable[int]] = None) -> list[Item]:
    """IEMOCAP in its release layout, 4-class set (neutral, happy+excited, sad, angry).

    Reads `Session*/dialog/EmoEvaluation/<dialog>.txt` for labels,
    `Session*/dialog/transcriptions/<dialog>.txt` for transcripts and
    `Session*/sentences/wav/<dialog>/<utt>.wav` for audio. Speaker = session + gender of the
    utterance's speaker (e.g. 'Ses01_F'); `Item.id` is the utterance id.
    """
    import re
    root = Path(root)
    keep = None if sessions is None else {int(s) for s in sessions}
    line_re = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t")
    tr_re = re.compile(r"^(\S+) \[[\d.]+-[\d.]+\]: (.*)$")
    items = []
    for sess in sorted(root.glob("Session*")):
        num = int(sess.name.replace("Session", ""))
        if keep is not None and num not in keep:
            continue
        transcripts: dict[str, str] = {}
        for tf in sorted((sess / "dialog" / "transcriptions").glob("*.txt")):
            for line in tf.read_text(encoding="utf-8", errors="replace").splitlines():
                m = tr_re.match(line.strip())
                if m:
                    transcripts[m.group(1)] = m.group(2).strip()
        for ef in sorted((sess / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialog = ef.stem
            for line in ef.read_text(encoding="utf-8", errors="replace").splitlines():
                m = line_re.match(line)
                if not m or m.group(2) not in IEMOCAP_4:
                    continue
                utt = m.group(1)
                wav = sess / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.exists():
                    continue
                gender = utt.split("_")[-1][0]
                items.append(Item(str(wav), IEMOCAP_4[m.group(2)], transcripts.get(utt),
                                  f"Ses{num:02d}_{gender}", id=utt, corpus="iemocap"))
    return items


def iemocap_folds(items: Sequence[Item]) -> list[tuple[int, list[Item], list[Item]]]:
    """Leave-one-session-out folds: [(session, train, test)] for sessions present."""
    sessions = sorted({int(i.speaker[3:5]) for i in items})
    return [(s, [i for i in items if int(i.speaker[3:5]) != s],
             [i for i in items if int(i.speaker[3:5]) == s]) for s in sessions]


# ---- synthetic: GoEmotions texts spoken by a flat espeak-ng voice ----------------------------
def espeak_goemotions(split: str = "dev", part: str = "all", per_class: int = 40,
                      cache: str | Path | None = None, seed: int = 0) -> list[Item]:
    """Emotional sentences spoken by a flat synthetic voice (espeak-ng), built on first use.

    `per_class` single-label GoEmotions rows per label are synthesised into `cache`
    (default ~/.cache/emodemo/espeak-goemotions-<split>); `part` 'fit' / 'eval' gives the two
    halves (for fitting fusion and for measuring it), 'all' both.
    """
    import random
    import shutil
    import subprocess
    import soundfile as sf
    if shutil.which("espeak-ng") is None:
        raise DataError("espeak-ng is needed to build the synthetic set (apt-get install espeak-ng)")
    cache = Path(cache or Path.home() / ".cache" / "emodemo" / f"espeak-goemotions-{split}")
    cache.mkdir(parents=True, exist_ok=True)
    rows = [r for r in goemotions(split) if len(r.labels) == 1 and 3 <= len(r.transcript.split()) <= 30]
    rng = random.Random(seed)
    rng.shuffle(rows)
    chosen: list[Item] = []
    for lab in LABELS:
        chosen += [r for r in rows if r.label == lab][:per_class]
    items = []
    for k, r in enumerate(sorted(chosen, key=lambda r: r.id)):
        wav = cache / f"{r.id}.wav"
        if not wav.exists():
            raw = cache / f"{r.id}.raw.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), r.transcript],
                           check=True, capture_output=True)
            from .audio import load_audio
            sf.write(str(wav), load_audio(raw), 16000)
            raw.unlink()
        items.append(Item(str(wav), r.label, r.transcript, "espeak", id=r.id, corpus="espeak"))
    if part == "all":
        return items
    half = [it for j, it in enumerate(items) if (j % 2 == 0) == (part == "fit")]
    return half


def check_labels(items: Sequence[Item], labels: Sequence[str], where: str) -> list[Item]:
    """`items` as a list, or a DataError naming `where` (e.g. the recipe key and its spec) when
    some item's label is not one of `labels` (a recipe's class list that does not fit its data)."""
    unknown = sorted({i.label for i in items} - set(labels))
    if unknown:
        raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown))} not among the labels "
                        f"{', '.join(labels)}")
    return list(items)


def _int_ranges(s: str) -> list[int]:
    out = []
    for part in s.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


COPY_KINDS = ("degrade", "codec", "voice")     # the kinds of copies (emodemo.degrade.SPEC_TAGS)
COPY_SPEC = re.compile(rf"(.+):({'|'.join(COPY_KINDS)})=(\d+)")   # a spec's copies, last option


def is_copy_spec(spec: str) -> bool:
    """Whether a data spec names copies of clips (`...:degrade=K`, `:codec=K` or `:voice=K`)."""
    return COPY_SPEC.fullmatch(spec) is not None


def load_spec(spec: str | Sequence[str]) -> list[Item]:
    """Items from a data spec string (or a list of them, concatenated):

    `ravdess[:actors=1-16][:root=DIR]`, `goemotions:train|dev[:root=DIR]`,
    `iemocap:ROOT[:sessions=1-4]`, `csv:PATH` (or a path ending in .csv),
    `espeak-goemotions:dev[:fit|eval][:per_class=N]`,
    `folder:ROOT[:speakers=a,b][:exclude_speakers=c][:name=N][:max_per_speaker=K]` ("folder +
    labels.csv") and the named
    folder corpora `nemo[...]`, `emotiontts-ko[...]`, `crema-d[...]`, `emovo[...]` (under
    SHARED_DATA, same options). A trailing
    `:as=LABEL` relabels every item (e.g. flat synthetic speech as `neutral` for the audio branch);
    `:degrade=K` gives a degraded copy (room, phone or microphone, noise: `emodemo.degrade`) of
    every K-th item instead, `:codec=K` one through a real speech codec (GSM, Opus, MP3), `:voice=K`
    one as another voice would say it (speed perturbation).
    """
    if not isinstance(spec, str):
        return [it for s in spec for it in load_spec(s)]
    copy = COPY_SPEC.fullmatch(spec)
    if copy:
        from .degrade import SPEC_TAGS, degraded   # rendered once, then read from disk
        return degraded(load_spec(copy[1]), int(copy[3]), SPEC_TAGS[copy[2]])
    if ":as=" in spec:
        spec, _, label = spec.rpartition(":as=")
        return [replace(i, label=label, labels=(label,)) for i in load_spec(spec)]
    if spec.endswith(".csv") and not spec.startswith("csv:"):
        spec = "csv:" + spec
    kind, _, rest = spec.partition(":")
    parts = [p for p in rest.split(":") if p] if kind != "csv" else [rest]
    kw = dict(p.split("=", 1) for p in parts if "=" in p)
    pos = [p for p in parts if "=" not in p]
    if kind == "ravdess":
        return ravdess(kw.get("root", SHARED_DATA / "ravdess"),
                       _int_ranges(kw["actors"]) if "actors" in kw else None)
    if kind == "goemotions":
        return goemotions(pos[0] if pos else "train", kw.get("root", SHARED_DATA / "goemotions"))
    if kind == "iemocap":
        return iemocap(pos[0], _int_ranges(kw["sessions"]) if "sessions" in kw else None)
    if kind == "csv":
        return manifest(rest)
    if kind in FOLDER_CORPORA or kind == "folder":
        root = pos[0] if kind == "folder" else kw.get("root", SHARED_DATA / FOLDER_CORPORA[kind])
        split = lambda k: [x for x in kw[k].split(",") if x] if k in kw else None  # noqa: E731
        return folder(root, split("speakers"), split("exclude_speakers"),
                      kw.get("name") or (kind if kind != "folder" else None),
                      int(kw["max_per_speaker"]) if "max_per_speaker" in kw else None)
    if kind == "espeak-goemotions":
        return espeak_goemotions(pos[0] if pos else "dev", pos[1] if len(pos) > 1 else "all",
                                 int(kw.get("per_class", 40 if (pos[:1] or ["dev"])[0] == "dev" else 50)))
    raise DataError(f"unknown data spec {spec!r}")
