"""Issue 21's last lever: the Whisper base backbone's top block partly unfrozen under the pooled head
(v9's recipe otherwise), measured on the same protocol as compare_backbones.py: the mean validation
UA over corpora and leave-one-corpus-out UA on the left-out corpus's non-held-out speakers ("LOCO
rest"), single clips, each fit with and without the block trained, in one run.

What is trained: block 6's feed-forward half (`mlp_ln` + `mlp`, 2.1 M of the block's 3.1 M
parameters) with the linear head; block 6's attention stays frozen. That makes the experiment fit
2 CPU cores: the residual stream after block 6's attention is a fixed input, and the feed-forward
layer works frame by frame, so only the frames the head pools (each clip's speech span) are
needed. The cache per clip: the mean+std of blocks 1-5 over the span (fixed, 5,120 numbers) and
the span's frames after block 6's attention ([n, 512]), float16, under
runs/features/<backbone key>-topmlp.

Procedure (written before any number, runs/v10/DECISION-topblock.md):
1. frozen: `multicorpus.fit_probe` on mean+std of blocks 1-6 (v9's options, no refit);
2. trained: from that probe (its standardisation and its 256 principal directions fixed), block 6's
   feed-forward layer and the head on those directions trained with AdamW (lr 2e-5 block,
   1e-3 head), the same balanced class-masked loss + the chosen L2 on the head, batch 64,
   3 epochs; the epoch (0 = frozen) with the best mean validation UA kept;
3. the same for each left-out corpus (selection on the other corpora's validation speakers).

    nohup nice python scripts/top_block.py extract > runs/topblock-extract.log 2>&1 &
    python scripts/top_block.py run --out runs/compare/topblock.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo import audio as A  # noqa: E402
from emodemo.bundle import LABELS  # noqa: E402
from emodemo.speech import build_backbone, masked_stats, span_frames, speech_spans  # noqa: E402
from emodemo.training import multicorpus as MC  # noqa: E402
from emodemo.training.features import DEFAULT_ROOT, FrameCache, backbone_key  # noqa: E402
from emodemo.training.loops import pad_frames  # noqa: E402
from emodemo.training.pooled import clean  # noqa: E402
from emodemo.training.recipe import Recipe  # noqa: E402
from emodemo.whisper_encoder import PAD_VALUE, WINDOW_FRAMES, _attention, window_frames  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_backbones import corpora_of  # noqa: E402

CONFIG = "configs/default-v9.json"
FIXED_BLOCKS = 5            # blocks 1..5 pooled as they are
STAT_ROWS = 2 * FIXED_BLOCKS  # rows of 512 holding their mean+std (5 x 1,024 = 10 x 512)
EPOCHS, BATCH, LR_BLOCK, LR_HEAD = 3, 64, 2e-5, 1e-3


def speech_cfg(recipe: Recipe) -> dict:
    sc = recipe.speech
    return {"backbone": sc.backbone, "source": sc.source, "trim": sc.trim}


# ---- extraction -------------------------------------------------------------------------------
def top_extractor(backbone):
    """waveforms -> one [STAT_ROWS + n, 512] tensor each: mean+std of blocks 1-5 over the speech span
    (rows 0..9), then the span's frames after block 6's attention (the feed-forward layer's input)."""
    enc = backbone.encoder
    blk = enc.blocks[FIXED_BLOCKS]

    @torch.inference_mode()
    def extract(wavs):
        feats = [A.features(backbone.feature, w) for w in wavs]
        x, lengths = pad_frames(feats)
        if int(lengths.max()) > WINDOW_FRAMES:
            raise ValueError("top_block: clips longer than one 30-s window are not supported")
        spans = speech_spans(x, lengths)
        windows = torch.tensor([window_frames(int(n)) for n in lengths])
        xw = x.new_full((len(x), int(windows.max()), x.shape[2]), PAD_VALUE)
        for i, n in enumerate(lengths.tolist()):
            xw[i, :n] = x[i, :n]
        h, mask = backbone.stem(xw, windows)
        out_len = (lengths + 1) // 2
        stats = []
        for b in enc.blocks[:FIXED_BLOCKS]:
            h = h + _attention(b.attn, b.attn_ln(h), mask)
            h = h + b.mlp(b.mlp_ln(h))
            hs, n_s = span_frames(h, out_len, spans)
            stats.append(masked_stats(hs, n_s))                       # [B, 1024]
        r = h + _attention(blk.attn, blk.attn_ln(h), mask)
        rs, n_s = span_frames(r, out_len, spans)
        st = torch.stack(stats, 1)                                    # [B, 5, 1024]: mean, std per block
        return [torch.cat([st[i].reshape(STAT_ROWS, -1), rs[i, :int(n_s[i])]]) for i in range(len(wavs))]
    return extract


def all_items(corpora: dict) -> list:
    return [i for c in corpora.values() for part in ("train", "val", "test") for i in getattr(c, part)]


def extract(recipe: Recipe, corpora: dict, root: str) -> None:
    cfg = speech_cfg(recipe)
    cache = FrameCache(backbone_key(cfg) + "-topmlp", root)
    items = all_items(corpora)
    todo = cache.missing(items)
    print(f"{len(items)} items, {len(todo)} to extract", flush=True)
    if todo:
        backbone = build_backbone(cfg["backbone"], cfg["source"])
        backbone.eval()
        t = time.time()
        cache.fill(todo, top_extractor(backbone), desc="top block", batch_size=8)
        print(f"extracted in {time.time() - t:.0f} s", flush=True)


# ---- the model on cached entries --------------------------------------------------------------
class FeedForward(torch.nn.Module):
    """Block 6's feed-forward half (a trainable copy) on cached entries: the pooled mean+std of
    blocks 1-6 [B, 6,144]; with the pretrained weights, exactly the frozen backbone's."""

    def __init__(self, block):
        super().__init__()
        self.mlp_ln, self.mlp = copy.deepcopy(block.mlp_ln), copy.deepcopy(block.mlp)

    def forward(self, fixed, r, lengths):
        h = r + self.mlp(self.mlp_ln(r))                                # [B, T, 512]
        return ordered(fixed, masked_stats(h, lengths))                 # [B, 6,144]


class TopModel(torch.nn.Module):
    """`FeedForward`'s pooled vectors standardised, projected on fixed principal directions,
    then a linear layer."""

    def __init__(self, block, mean, std, basis, lin):
        super().__init__()
        self.ff = FeedForward(block)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("basis", basis)
        self.lin = lin

    def head(self, v):
        """Logits of pooled vectors [B, 6,144]."""
        return self.lin(((v - self.mean) / self.std) @ self.basis)

    def forward(self, fixed, r, lengths):
        return self.head(self.ff(fixed, r, lengths))


def ordered(fixed: torch.Tensor, s6: torch.Tensor) -> torch.Tensor:
    """Blocks 1-5 [B, 5, 1024] (each block's mean, std) and block 6's [B, 1024] -> the mean+std of
    the concatenated blocks 1-6: all means, then all stds (`features.stats_view`'s order), [B, 6,144]."""
    d = s6.shape[1] // 2
    return torch.cat([fixed[..., :d].flatten(1), s6[:, :d], fixed[..., d:].flatten(1), s6[:, d:]], -1)


def batch_of(entries: list) -> tuple:
    fixed = torch.stack([e[:STAT_ROWS].float().reshape(FIXED_BLOCKS, -1) for e in entries])
    r, lengths = pad_frames([e[STAT_ROWS:].float() for e in entries])
    return fixed, r, lengths


def vectors(ff: FeedForward, entries: list) -> torch.Tensor:
    """[N, 6,144] pooled vectors of cached entries through a feed-forward layer."""
    out = []
    with torch.inference_mode():
        for b in range(0, len(entries), 128):
            out.append(ff(*batch_of(entries[b:b + 128])))
    return torch.cat(out)


# ---- fitting ------------------------------------------------------------------------------------
def evaluate(model: TopModel, entries: list, y: np.ndarray, corpus: list) -> dict:
    """multicorpus.report per corpus of the model's single-clip predictions."""
    with torch.inference_mode():
        p = torch.softmax(model.head(vectors(model.ff, entries)), -1)
    corp = np.array(corpus)
    return {c: MC.report(p.double().numpy()[corp == c], y[corp == c], LABELS) for c in dict.fromkeys(corpus)}


def real_score(per: dict, corpora: dict) -> float:
    return MC.select_score({c: m for c, m in per.items() if not corpora[c].aux})


def train_epoch(model: TopModel, data: tuple, l2: float, opt, seed: int) -> float:
    entries, y, mask, weight = data
    order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed))
    model.train()
    total = 0.0
    for b in range(0, len(order), BATCH):
        idx = order[b:b + BATCH]
        logits = model(*batch_of([entries[i] for i in idx.tolist()]))
        loss = MC.masked_loss(logits, y[idx], mask[idx], weight[idx], 0.0) + l2 * model.lin.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    model.eval()
    return total / len(order)


def fit(corpora: dict, names: list, entry, frozen: dict, block, options) -> tuple[TopModel, dict]:
    """The frozen probe on `names`' training speakers, then block 6's feed-forward layer and the
    head trained from it; the epoch with the best mean validation UA kept (0 = frozen)."""
    feats = lambda items: [frozen[id(i)] for i in items]  # noqa: E731
    tr, tr_items = MC.gather(corpora, "train", feats, LABELS, names)
    va, va_items = MC.gather(corpora, "val", feats, LABELS, names)
    probe, hist, best = MC.fit_probe(tr, tr_items, va, corpora, LABELS, options)
    l2 = max(hist, key=lambda h: h["val_mean_UA"])["l2"]
    x = torch.stack(tr.xs).float()
    basis = MC.principal_basis((x - probe.mean) / probe.std, options.components)
    lin = torch.nn.Linear(basis.shape[1], len(LABELS))
    with torch.no_grad():
        lin.weight.copy_(probe.out.weight @ basis)
        lin.bias.copy_(probe.out.bias)
    model = TopModel(block, probe.mean.clone(), probe.std.clone(), basis, lin).eval()
    frozen_model = copy.deepcopy(model)                     # epoch 0: the probe on its directions
    masks = MC.class_masks(corpora, LABELS)
    data = ([entry(i) for i in tr_items], torch.tensor(tr.y), torch.stack([masks[c] for c in tr.corpus]),
            torch.tensor(MC.balance_weights(tr_items, tr.corpus, LABELS, options.corpus_weight), dtype=torch.float32))
    va_entries = [entry(i) for i in va_items]
    per0 = evaluate(model, va_entries, va.y, va.corpus)
    log = {"l2": l2, "probe_val_mean_UA": best, "epochs": [{"epoch": 0, "val_mean_UA": real_score(per0, corpora)}]}
    opt = torch.optim.AdamW([{"params": list(model.ff.parameters()), "lr": LR_BLOCK},
                             {"params": model.lin.parameters(), "lr": LR_HEAD}], weight_decay=0.0)
    best_state, best_score = copy.deepcopy(model.state_dict()), log["epochs"][0]["val_mean_UA"]
    for ep in range(1, EPOCHS + 1):
        t = time.time()
        loss = train_epoch(model, data, l2, opt, ep)
        score = real_score(evaluate(model, va_entries, va.y, va.corpus), corpora)
        log["epochs"].append({"epoch": ep, "loss": round(loss, 4), "val_mean_UA": score,
                              "seconds": round(time.time() - t, 1)})
        print(f"  {names}: epoch {ep} loss {loss:.4f} val {score:.4f} ({time.time() - t:.0f} s)", flush=True)
        if score > best_score:
            best_state, best_score = copy.deepcopy(model.state_dict()), score
    model.load_state_dict(best_state)
    log["chosen_epoch"] = max(log["epochs"], key=lambda e: e["val_mean_UA"])["epoch"]
    return model, frozen_model, log


def scored(models: dict, entry, items: list, name: str) -> dict:
    y = np.array([LABELS.index(i.label) for i in items])
    return {k: evaluate(m, [entry(i) for i in items], y, [name] * len(items))[name] for k, m in models.items()}


def run(recipe: Recipe, corpora: dict, root: str, out: str) -> None:
    cfg = speech_cfg(recipe)
    cache = FrameCache(backbone_key(cfg) + "-topmlp", root)
    items = all_items(corpora)
    t = time.time()
    store = {id(i): e for i, e in zip(items, cache.load(items))}
    entry = lambda i: store[id(i)]  # noqa: E731
    block = build_backbone(cfg["backbone"], cfg["source"]).encoder.blocks[FIXED_BLOCKS]
    frozen = dict(zip([id(i) for i in items], vectors(FeedForward(block).eval(), [entry(i) for i in items])))
    print(f"{len(items)} entries loaded and pooled in {time.time() - t:.0f} s", flush=True)
    options = MC.ProbeOptions.of(recipe.speech.multicorpus, refit=False)
    real = [c for c in corpora if not corpora[c].aux]
    result: dict = {"setting": {"epochs": EPOCHS, "batch": BATCH, "lr_block": LR_BLOCK, "lr_head": LR_HEAD}}
    model, frozen_model, log = fit(corpora, list(corpora), entry, frozen, block, options)
    models = {"frozen": frozen_model, "trained": model}
    result["all"] = {"log": log, "val": {c: scored(models, entry, corpora[c].val, c) for c in real},
                     "test": {c: scored(models, entry, clean(corpora[c].test), c) for c in real}}
    result["loco"] = {}
    for left in real:
        m, fm, lg = fit(corpora, [c for c in corpora if c != left], entry, frozen, block, options)
        rest = clean(corpora[left].train + corpora[left].val)
        result["loco"][left] = {"log": lg, "rest": scored({"frozen": fm, "trained": m}, entry, rest, left)}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    summary(result, real)
    Path(out).write_text(json.dumps(result, indent=1, default=float) + "\n")


def summary(result: dict, real: list) -> None:
    for k in ("frozen", "trained"):
        val = np.mean([result["all"]["val"][c][k]["UA"] for c in real])
        rest = np.mean([result["loco"][c]["rest"][k]["UA"] for c in result["loco"]])
        share = max(result["loco"][c]["rest"][k]["max_share"] for c in result["loco"])
        test = " / ".join(f"{result['all']['test'][c][k]['UA']:.3f}" for c in real)
        result.setdefault("summary", {})[k] = {"val_mean_UA": val, "loco_rest_mean_UA": rest, "loco_max_share": share}
        print(f"{k}: val mean UA {val:.3f} | LOCO rest mean UA {rest:.3f} | largest class {share:.2f} | held-out {test}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("extract", "run"))
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--cache", default=str(DEFAULT_ROOT))
    ap.add_argument("--out", default="runs/compare/topblock.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe.coerce(json.loads(Path(args.config).read_text()))
    corpora = corpora_of(recipe, None)
    if args.what == "extract":
        extract(recipe, corpora, args.cache)
    else:
        run(recipe, corpora, args.cache, args.out)


if __name__ == "__main__":
    main()
