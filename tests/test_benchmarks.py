"""Smoke tests for the benchmark code (benchmarks/run.py and its bench_* modules): tiny pieces, no
timing asserts."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SR = 16000
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_before as before  # noqa: E402
import bench_children as children  # noqa: E402
import bench_corpus as corpora  # noqa: E402
import bench_inprocess as inprocess  # noqa: E402
import bench_report as report  # noqa: E402
import bench_system as system  # noqa: E402
import bench_timing as timing  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("emodemo_benchmarks_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod           # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def _stat(x: float) -> dict:
    return {"median": x, "min": x, "max": x, "n": 1, "runs": [x]}


def fake_results() -> dict:
    """A results dict with every section, shaped like run() writes it."""
    lat = [{"seconds": s, "transcript_words": 3, "audio": _stat(0.01 * s), "asr": _stat(0.3), "text": _stat(0.02),
            "fusion": _stat(2e-5), "e2e": _stat(0.35 + 0.01 * s), "e2e_audio_only": _stat(0.012 * s),
            "rtf": (0.35 + 0.01 * s) / s, "rtf_audio_only": 0.012} for s in (1.0, 5.0)]
    peers = [{"seconds": 5.0, "timings": {"ours": _stat(0.05), "wav2vec2-base": _stat(0.9), "hubert-base": _stat(1.0),
                                          "wespeaker-resnet34": _stat(0.2)},
              "ratio": {"wav2vec2-base": 18.0, "hubert-base": 20.0, "wespeaker-resnet34": 4.0}}]
    long = [{"minutes": m, "asr": False, "segments": 7 * m, "seconds": 1.2 * m, "rtf": 0.02, "rss_before_mb": 700.0,
             "rss_peak_mb": 720.0 + m, "growth_mb": 20.0 + m, "audio_mb": 1.83 * m, "torch_threads": 1,
             "variant": "after", "breakdown": {"load_audio_mb": 2.0, "segment_energy_before_mb": 10.0 * m,
                                               "segment_energy_after_mb": 0.0}}
            for m in (1, 10)]
    long.append({**long[-1], "asr": True, "rtf": 0.05})
    long.append({**long[-1], "variant": "before", "rtf": 0.15, "torch_threads": 2})   # not a target row
    ba = {"audio_t2_before": _stat(0.075), "audio_t1_after": _stat(0.05), "asr_before": _stat(0.47),
          "asr_30s_t0": _stat(0.48), "asr_after": _stat(0.15), "e2e_before": _stat(0.57), "e2e_after": _stat(0.22)}
    return {"mode": "quick", "bundle": "/tmp/b", "bundle_note": "test",
            "machine": {"date": "2026-01-01 00:00 UTC", "cpu": "Test CPU", "cores": 2, "torch": "2.x",
                        "torch_threads": 2, "asr_threads": 2, "ctranslate2": "4", "contention": ["123 python x"],
                        "load_avg_start": [1.0, 1.0, 1.0]},
            "latency": lat, "peers": peers, "peer_params": {"ours": 1e6, "wav2vec2-base": 9.5e7},
            "before_after": [{"seconds": 5.0, "torch_threads": {"before": 2, "after": 1}, "asr_window_after": "clip",
                              "timings": ba, "speedup": {"audio": 1.5, "asr": 3.1, "e2e": 2.6}}],
            "asr_wer": {"before": 0.127, "after": 0.109, "sentences": 24},
            "batch_before_after": {"clips": 32, "clip_seconds": 3.0, "batch": 16, "speedup": 2.4,
                                   "max_abs_diff": 2e-7, "clips_per_s": {"one_by_one_t2_before": 25.0,
                                                                          "batch16_t1_after": 61.0}},
            "long_audio": long,
            "cold_start": {"to_first_prediction": _stat(8.0), "breakdown": {"import": 2.0, "load": 3.0,
                                                                            "first_predict": 3.0}},
            "serving": {"n": 3, "rss_after_load_mb": 700.0, "maxrss_mb": 1000.0, "predict": _stat(0.4)},
            "cli": [{"clips": 10, "asr": False, "variant": "after", "args": "(defaults)", "total_s": 5.0,
                     "startup_s": 4.0, "clips_per_s_total": 2.0, "clips_per_s_steady": 60.0},
                    {"clips": 10, "asr": False, "variant": "before", "args": "--batch-size 1 --threads 2",
                     "total_s": 5.0, "startup_s": 4.0, "clips_per_s_total": 2.0, "clips_per_s_steady": 90.0},
                    {"clips": 4, "asr": True, "variant": "after", "args": "(defaults)", "total_s": 9.0,
                     "startup_s": 5.0, "clips_per_s_total": 0.4, "clips_per_s_steady": 1.0}]}


def test_timeit_runs_warmup_plus_reps():
    calls = []
    r = timing.timeit(lambda: calls.append(1), reps=1, warmup=1)
    assert len(calls) == 2 and r["n"] == 1 and r["median"] >= 0 and len(r["runs"]) == 1
    order = []
    t = timing.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, reps=2, warmup=0)
    assert order == ["a", "b", "a", "b"] and set(t) == {"a", "b"} and t["a"]["n"] == 2


def test_clip_trims_and_tiles():
    corpus = np.arange(3 * SR, dtype=np.float32)
    c = corpora.clip(corpus, 1.0, 0.5)
    assert c.size == SR and c[0] == SR // 2
    long = corpora.clip(corpus, 7.0, 2.0)          # longer than the corpus: wraps around
    assert long.size == 7 * SR and long[SR] == 0 and long.flags["C_CONTIGUOUS"]


def test_espeak_sentence_is_16k_speech():
    wav = corpora.espeak("Hello there, how are you?")
    assert wav.dtype == np.float32 and 0.5 < wav.size / SR < 4.0
    assert np.abs(wav).max() > 0.05


def test_targets_use_the_after_rows():
    res = fake_results()
    t = report.evaluate_targets(res)
    assert t["e2e_5s"]["value"] == pytest.approx(0.22) and t["e2e_5s"]["met"] is True   # e2e_after
    assert t["audio_vs_wav2vec2"]["met"] is True
    assert t["long_rtf"]["value"] == pytest.approx(0.02)            # the 10-min audio-only after row
    assert t["long_flat_mb"]["value"] == pytest.approx(30.0 - 18.3)
    assert t["long_rtf_asr"]["value"] == pytest.approx(0.05)        # not the before row (0.15)
    assert t["cli_audio"]["value"] == 60.0                           # not the before or ASR row
    assert t["serve_rss"]["met"] is True and t["cold_start"]["met"] is True
    del res["before_after"]                                          # falls back to the latency section
    assert report.evaluate_targets(res)["e2e_5s"]["value"] == pytest.approx(0.4)
    empty = report.evaluate_targets({})
    assert all(v["value"] is None and v["met"] is None for v in empty.values())


def test_markdown_tables_and_readme_block(tmp_path):
    md = report.render_markdown(fake_results())
    for needle in ("| target | goal | measured | met |", "Latency per clip", "| 5 s |", "wav2vec2-base",
                   "Before/after", "e2e_before | e2e_after", "2.6×", "before (30-s window", "10.9%",
                   "batch16_t1_after", "Long audio", "| 10 min |", "| before (2 torch threads", "energy before",
                   "cold start", "Batch CLI", "--batch-size 1 --threads 2", "Test CPU", "CPU-heavy processes"):
        assert needle in md, needle
    assert "What-if" not in md and "proposed" not in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# Bench\n\nintro\n\n{report.README_START}\nold table\n{report.README_END}\n\n## Findings\nkept\n")
    report.update_readme(md, readme)
    report.update_readme(md, readme)                                   # idempotent
    text = readme.read_text()
    assert "old table" not in text and text.count("| target | goal |") == 1
    assert text.startswith("# Bench\n\nintro") and text.rstrip().endswith("kept")


def test_peak_rss_sees_an_allocation():
    # fresh anonymous pages (a numpy array may reuse memory that is already resident in a
    # long-running test process, so the RSS would not move)
    import mmap
    with system.PeakRSS() as m:
        buf = mmap.mmap(-1, 64 << 20)
        pages = np.frombuffer(buf, dtype=np.uint8)
        pages[:] = 1                                   # 64 MB, every page touched
        time.sleep(0.05)                               # long enough for the sampling fallback
        del pages
        buf.close()
    assert m.method in ("VmHWM", "sampling") and m.peak >= m.start + 40


@pytest.mark.slow
def test_peer_comparison_with_tiny_models():
    peers = inprocess.build_peers(small=True)
    assert set(peers) == {"wav2vec2-base", "hubert-base", "wespeaker-resnet34"}
    wav = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    r = inprocess.compare_peers(lambda w: float(np.abs(w).sum()), peers, wav, reps=1)
    assert r["seconds"] == 1.0 and set(r["ratio"]) == set(peers) and all(v > 0 for v in r["ratio"].values())


@pytest.mark.slow
def test_latency_row_one_repetition(recognizer, speech_wav):
    import soundfile as sf
    wav, sr = sf.read(str(speech_wav), dtype="float32")
    assert sr == SR
    row = inprocess.latency(recognizer, wav[: 2 * SR], reps=1)
    for k in ("audio", "asr", "text", "fusion", "e2e", "e2e_audio_only"):
        assert row[k]["n"] >= 1 and row[k]["median"] >= 0
    assert row["seconds"] == 2.0 and row["rtf"] > 0


def test_sections_and_whatif_alias(bench):
    assert bench.parse_sections("whatif,cli") == ["before_after", "cli"]
    assert bench.parse_sections("before_after,whatif,") == ["before_after"]
    assert bench.parse_sections("") == []
    assert set(bench.parse_sections(",".join(bench.ALL_SECTIONS))) == set(bench.ALL_SECTIONS)
    with pytest.raises(ValueError):
        bench.parse_sections("latency,nope")


def test_frame_energy_before_matches_package():
    from emodemo import audio as A
    wav = (0.1 * np.random.default_rng(1).standard_normal(5 * SR + 123)).astype(np.float32)
    hop = SR * 30 // 1000
    before, after = children.frame_energy_before(wav, hop), A.frame_energy_db(wav, hop, block=7)
    assert before.shape == after.shape == (wav.size // hop,) and np.allclose(before, after)


def test_cli_steady_rate_skips_the_first_batch():
    assert children.steady_rate([1.0, 1.5, 2.0]) == pytest.approx(2 / 1.0)          # one line at a time
    burst = [2.0] * 16 + [3.0] * 16                                               # two batches of 16
    assert children.steady_rate(burst, first_burst=16) == pytest.approx(16 / 1.0)
    assert children.steady_rate([2.0] * 8, first_burst=16) is None                   # one batch only
    assert children.steady_rate([], first_burst=1) is None


@pytest.mark.slow
def test_before_after_one_repetition_restores_the_recognizer(recognizer, speech_wav):
    import soundfile as sf
    import torch
    wav, sr = sf.read(str(speech_wav), dtype="float32")
    rec = recognizer
    asr, window, threads = rec.asr, rec.asr.window, torch.get_num_threads()
    with before.before_fixes(rec):
        assert isinstance(rec.asr, before.BeforeASR) and torch.get_num_threads() == before.BEFORE_TORCH_THREADS
    assert rec.asr is asr and torch.get_num_threads() == threads
    r = before.before_after(rec, wav[: 2 * SR], reps=1)
    assert set(r["timings"]) == {f"audio_t{before.BEFORE_TORCH_THREADS}_before", f"audio_t{rec.threads}_after",
                                 "asr_before", "asr_30s_t0", "asr_after", "e2e_before", "e2e_after"}
    assert all(v["n"] == 1 and v["median"] > 0 for v in r["timings"].values())
    assert set(r["speedup"]) == {"audio", "asr", "e2e"} and set(r["transcripts"]) == {"before", "after"}
    assert rec.asr is asr and rec.asr.window == window and torch.get_num_threads() == threads
    clips = [wav[:SR], wav[SR // 2: 2 * SR], wav[: int(1.3 * SR)]]
    b = before.batch_before_after(rec, clips, reps=1, batch=2)
    assert b["clips"] == 3 and len(b["clips_per_s"]) == 2 and b["max_abs_diff"] < 1e-4
    assert torch.get_num_threads() == threads


def test_write_results_json_and_markdown(bench, tmp_path, capsys):
    res = fake_results()
    bench.write_results(res, tmp_path, readme=False)
    import json
    assert json.loads((tmp_path / "results.json").read_text())["cli"][0]["clips_per_s_steady"] == 60.0
    assert (tmp_path / "results.md").read_text() == report.render_markdown(res)
    assert "| target | goal | measured | met |" in capsys.readouterr().out
    assert list(bench.SECTIONS) == list(bench.ALL_SECTIONS)
    with pytest.raises(SystemExit, match="unknown child"):
        bench.main(["child", "nope"])
