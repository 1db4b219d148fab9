#!/usr/bin/env python
"""emodemo benchmarks: latency, peer architectures, fixes before/after, long audio, app start/memory,
batch CLI.

    python benchmarks/run.py            # full run (~10 min on 2 cores), updates benchmarks/README.md
    python benchmarks/run.py --quick    # smoke-sized run (< 2 min on an idle machine)
    python benchmarks/run.py --out /tmp/bench   # write results elsewhere (README left alone)
    python benchmarks/run.py --only before_after,cli   # some sections (`whatif` = before_after)

Every figure is the median of several timed runs after one warm-up. Comparison runs (our audio
branch vs the peer architectures; each fix before vs after) are interleaved round by round in the
same process, so their ratios hold even when the machine is noisy. Memory and start-up figures come
from fresh subprocesses (this script re-invoked with the hidden `child` command), one per
measurement.

Everything is measured on the package as it is ("after": `load_recognizer()` defaults — 1 torch
thread, clip-window ASR, blockwise frame energy, batched audio branch in the CLI). The `before`
variants reproduce the code before the fixes, only where needed to measure it:
  * torch threads: `torch.set_num_threads(2)` around the call (torch's default on the 2-core box
    the fixes were made on); in a child process `load_recognizer(threads=2)`, in the CLI `--threads 2`;
  * ASR: `BeforeASR`, faster-whisper's own `transcribe` on the same WhisperModel (every chunk
    zero-padded to the 30-s window, default temperature fallback), as `FasterWhisperASR` did;
  * `segment()` frame energy: `frame_energy_before` (a float64 copy of the whole file and its
    square), for the memory breakdown only;
  * batch CLI: `--batch-size 1 --threads 2` (one clip at a time, 2 torch threads).

Test audio is speech-like: espeak-ng reads a fixed passage of distinct sentences (several voices,
short pauses between sentences), resampled to 16 kHz and tiled/trimmed to the needed length.
The passage does not repeat inside any 60-s window, so Whisper's repetition guard
(compression-ratio fallback) is not triggered artificially.

Results: `<out>/results.json` (everything, raw timings included) and `<out>/results.md` (tables);
a full run of all sections into the default folder also replaces the results block of
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from bench_before import asr_accuracy, batch_before_after, before_after  # noqa: E402
from bench_children import child_cold, child_long, child_serve, cli_throughput, cold_start, long_audio  # noqa: E402
from bench_common import CLI_BEFORE_ARGS, SR  # noqa: E402
from bench_corpus import clip, speech_corpus, write_wav  # noqa: E402
from bench_inprocess import build_peers, compare_peers, latency, load, n_params, profile, resolve_bundle  # noqa: E402
from bench_report import evaluate_targets, fmt_ms, render_markdown, update_readme  # noqa: E402
from bench_system import ContentionLog, machine_info  # noqa: E402

QUICK = dict(lengths=[1, 5], reps={1: 2, 5: 2, 15: 1, 60: 1}, peer_lengths=[5], peer_reps=2,
             ba_lengths=[5], ba_reps=1, batch_clips=8, wer_check=False,
             long_minutes=[1, 2], long_asr_minutes=[], long_before_minutes=[], cold_reps=1, serve_n=3,
             cli_clips=32, cli_before_clips=8, cli_asr_clips=0)
FULL = dict(lengths=[1, 5, 15, 60], reps={1: 9, 5: 7, 15: 5, 60: 3}, peer_lengths=[1, 5, 15],
            peer_reps=3, ba_lengths=[1, 5], ba_reps=5, batch_clips=32, wer_check=True,
            long_minutes=[1, 5, 10], long_asr_minutes=[1, 10], long_before_minutes=[10], cold_reps=3,
            serve_n=30, cli_clips=120, cli_before_clips=60, cli_asr_clips=20)


@dataclass
class Bench:
    """What the sections share: sizes (`P`), the bundle, the test speech, a scratch folder, the
    results being filled in, the progress log, and the recognizer of the in-process sections."""
    P: dict
    bundle: str
    corpus: np.ndarray
    work: Path
    res: dict
    log: Callable[..., None]
    rec: object = None


# ---- sections: each fills its part of b.res ---------------------------------------------------
def section_latency(b: Bench) -> None:
    b.res["latency"] = []
    for sec in b.P["lengths"]:
        b.res["latency"].append(latency(b.rec, clip(b.corpus, sec, 3.0), b.P["reps"][sec]))
        r = b.res["latency"][-1]
        b.log(f"latency {sec:>3} s: audio {fmt_ms(r['audio']['median'])} ms, asr {fmt_ms(r['asr']['median'])} ms, "
              f"e2e {fmt_ms(r['e2e']['median'])} ms, rtf {r['rtf']:.3f}")


def section_peers(b: Bench) -> None:
    peers = build_peers()
    b.res["peer_params"] = {"ours": n_params(b.rec.speech), **{k: n_params(m) for k, m in peers.items()}}
    b.res["peers"] = []
    for sec in b.P["peer_lengths"]:
        b.res["peers"].append(compare_peers(b.rec.audio_proba, peers, clip(b.corpus, sec, 3.0), b.P["peer_reps"]))
        b.log(f"peers {sec} s: " + ", ".join(f"{k} {v:.1f}x" for k, v in b.res["peers"][-1]["ratio"].items()))
    del peers
    gc.collect()


def section_before_after(b: Bench) -> None:
    b.res["before_after"] = []
    for sec in b.P["ba_lengths"]:
        w = before_after(b.rec, clip(b.corpus, sec, 3.0), b.P["ba_reps"])
        b.res["before_after"].append(w)
        b.log(f"before/after {sec} s: " + ", ".join(f"{k} {fmt_ms(v['median'])}" for k, v in w["timings"].items()))
    if b.P["wer_check"]:
        b.res["asr_wer"] = asr_accuracy(b.rec)
        b.log(f"ASR WER on espeak sentences: {b.res['asr_wer']}")
    b.res["batch_before_after"] = batch_before_after(
        b.rec, [clip(b.corpus, 3.0, 3.1 * i) for i in range(b.P["batch_clips"])], min(3, b.P["ba_reps"]))
    b.log("batch before/after (clips/s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in b.res["batch_before_after"]["clips_per_s"].items()))


def _long_rows(rows: list[dict], rtf_only: bool = False) -> str:
    return ", ".join(f"{r['minutes']:g} min rtf {r['rtf']:.4f}" + ("" if rtf_only else f" growth {r['growth_mb']:.0f} MB")
                     for r in rows)


def section_long(b: Bench) -> None:
    b.res["long_audio"] = long_audio(b.bundle, b.corpus, b.P["long_minutes"], False, b.work)
    b.log("long audio-only: " + _long_rows(b.res["long_audio"]))
    if b.P["long_asr_minutes"]:
        asr_rows = long_audio(b.bundle, b.corpus, b.P["long_asr_minutes"], True, b.work)
        b.res["long_audio"] += asr_rows
        b.log("long with ASR: " + _long_rows(asr_rows))
    if b.P["long_before_minutes"]:
        rows = long_audio(b.bundle, b.corpus, b.P["long_before_minutes"], True, b.work, before=True)
        b.res["long_audio"] += rows
        b.log("long with ASR, before the fixes: " + _long_rows(rows, rtf_only=True))


def section_app(b: Bench) -> None:
    five = write_wav(b.work / "clip5s.wav", clip(b.corpus, 5.0, 3.0))
    mixed = [write_wav(b.work / f"serve_{i}.wav", clip(b.corpus, s, 11.0 * i))
             for i, s in enumerate([1, 5, 15, 3, 8, 2])]
    b.res["cold_start"] = cold_start(b.bundle, five, b.P["cold_reps"], b.P["serve_n"], mixed)
    b.res["serving"] = b.res["cold_start"].pop("serving")
    b.log(f"cold start: {b.res['cold_start']['to_first_prediction']['median']:.2f} s; "
          f"serving: max RSS {b.res['serving']['maxrss_mb']:.0f} MB")


def section_cli(b: Bench) -> None:
    d = b.work / "clips"
    d.mkdir()
    files = [write_wav(d / f"clip_{i:03d}.wav", clip(b.corpus, 3.0, 3.1 * i)) for i in range(b.P["cli_clips"])]
    b.res["cli"] = [cli_throughput(b.bundle, files, asr=False)]
    steady = lambda: b.res["cli"][-1]["clips_per_s_steady"] or 0   # noqa: E731
    b.log(f"cli --no-asr, after (defaults): {steady():.1f} clips/s steady")
    if b.P["cli_before_clips"]:
        b.res["cli"].append(cli_throughput(b.bundle, files[:b.P["cli_before_clips"]], asr=False, variant="before"))
        b.log(f"cli --no-asr, before ({' '.join(CLI_BEFORE_ARGS)}): {steady():.1f} clips/s steady")
    if b.P["cli_asr_clips"]:
        b.res["cli"].append(cli_throughput(b.bundle, files[:b.P["cli_asr_clips"]], asr=True))
        b.log(f"cli with ASR, after (defaults): {steady():.1f} clips/s steady")


def profile_step(b: Bench) -> None:
    """`--profile`: torch.profiler tables and the ASR time split, printed and kept."""
    b.log("profiling ...")
    b.res["profile"] = profile(b.rec, clip(b.corpus, 5.0, 3.0))
    for k in ("audio_branch", "text_branch"):
        print(b.res["profile"][k])
    print(json.dumps(b.res["profile"]["asr_split"], indent=1))


# Sections in run order. The in-process ones share one loaded recognizer; the others start fresh
# processes (`run.py child ...`), after the recognizer is released.
IN_PROCESS: dict[str, Callable[[Bench], None]] = {
    "latency": section_latency, "peers": section_peers, "before_after": section_before_after}
SUBPROCESS: dict[str, Callable[[Bench], None]] = {
    "long": section_long, "app": section_app, "cli": section_cli}
SECTIONS = {**IN_PROCESS, **SUBPROCESS}
ALL_SECTIONS = tuple(SECTIONS)
SECTION_ALIASES = {"whatif": "before_after"}      # the section's name before the fixes were applied


# ---- main ----------------------------------------------------------------------------------
def run(quick: bool, out_dir: Path, bundle_arg: Optional[str], sections: Sequence[str], do_profile: bool) -> dict:
    P = QUICK if quick else FULL
    t_start = time.perf_counter()
    bundle, note = resolve_bundle(bundle_arg)
    busy = ContentionLog()
    busy.sample("start")
    res: dict = {"mode": "quick" if quick else "full", "machine": machine_info(), "bundle": bundle,
                 "bundle_note": note, "params": P, "skipped": []}
    work = Path(tempfile.mkdtemp(prefix="emodemo-bench-"))

    def log(*a):
        print(f"[{time.perf_counter() - t_start:6.1f}s]", *a, flush=True)
        others = busy.sample(str(a[0])[:40] if a else "")
        if others:
            print("          busy meanwhile:", "; ".join(others), flush=True)
    try:
        log("generating espeak-ng speech ...")
        corpus = speech_corpus(cache=Path(tempfile.gettempdir()) / "emodemo-bench-speech.npy")
        log(f"corpus: {corpus.size / SR:.0f} s of speech")
        b = Bench(P, bundle, corpus, work, res, log)
        if set(IN_PROCESS) & set(sections) or do_profile:
            b.rec = load(bundle)
            res["bundle_config"] = {k: b.rec.config.get(k) for k in ("speech", "text", "asr")}
        for name, section in IN_PROCESS.items():
            if name in sections:
                section(b)
        if do_profile:
            profile_step(b)
        b.rec = None
        gc.collect()
        for name, section in SUBPROCESS.items():
            if name in sections:
                section(b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_avg_end"] = list(os.getloadavg())
    res["machine"]["contention"] = busy.seen
    res["machine"]["contention_samples"] = busy.samples
    res["total_s"] = time.perf_counter() - t_start
    res["targets"] = evaluate_targets(res)
    write_results(res, out_dir, readme=not quick and out_dir.resolve() == HERE
                  and set(sections) == set(ALL_SECTIONS))
    log(f"done; wrote {out_dir / 'results.json'}")
    return res


def write_results(res: dict, out_dir: Path, readme: bool) -> None:
    """results.json and results.md in `out_dir`; with `readme`, also README.md's results block."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = render_markdown(res)
    (out_dir / "results.md").write_text(md)
    if readme:
        update_readme(md)
    print("\n" + md)


def parse_sections(only: str) -> list[str]:
    """`--only` value → section names (aliases resolved, duplicates dropped); ValueError for
    unknown names."""
    out: list[str] = []
    for name in only.split(","):
        name = SECTION_ALIASES.get(name.strip(), name.strip())
        if name and name not in out:
            out.append(name)
    bad = set(out) - set(ALL_SECTIONS)
    if bad:
        raise ValueError(f"unknown sections {sorted(bad)}")
    return out


# `run.py child KIND ARGS...`: one measurement in a fresh process (see bench_children)
CHILDREN: dict[str, Callable[[list[str]], dict]] = {
    "long": lambda a: child_long(a[0], a[1], a[2] == "1", a[3], before=len(a) > 4 and a[4] == "1"),
    "cold": lambda a: child_cold(a[0], a[1], int(a[2]) if len(a) > 2 else 0, a[3:]),
    "serve": lambda a: child_serve(a[0], a[2:], int(a[1])),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child":
        kind, rest = argv[1], argv[2:]
        if kind not in CHILDREN:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(CHILDREN[kind](rest), default=float))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (< 2 min)")
    p.add_argument("--out", default=str(HERE), help="folder for results.json / results.md (default: benchmarks/)")
    p.add_argument("--bundle", default=None, help="model bundle (default: models/default, else /tmp/bundle_v1)")
    p.add_argument("--only", default=",".join(ALL_SECTIONS),
                   help=f"comma-separated sections to run: {','.join(ALL_SECTIONS)} "
                        f"({', '.join(f'{k} = {v}' for k, v in SECTION_ALIASES.items())})")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables and an ASR time split")
    a = p.parse_args(argv)
    try:
        sections = parse_sections(a.only)
    except ValueError as exc:
        p.error(str(exc))
    run(a.quick, Path(a.out), a.bundle, sections, a.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
