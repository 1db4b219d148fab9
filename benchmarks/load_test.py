"""Many visitors at once: a burst of simulated visitors against the app as shipped.

    python benchmarks/load_test.py                       # 20 visitors
    python benchmarks/load_test.py --visitors 4 --json /tmp/load.json

Starts `python app.py` (default options and queue settings, so exactly what a Space serves) on
127.0.0.1 and a free port, with a temporary SQLite database and media folder. After one warm-up
prediction, N visitors (threads, one `gradio_client.Client` each) are released together: each
predicts one of the example clips in data/examples through `/predict` (transcript "": the ASR runs,
as for a visitor who just uploads) and then stores a correction through `/correct`. Every call has a
timeout; the app is stopped at the end whatever happens. Prints p50/p95/max latency per endpoint and
per visitor, throughput, failures, and how many corrections the database holds afterwards.
Localhost only, a fixed number of requests (2 per visitor + 1 warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".webm"}
ANNOTATOR_PREFIX = "load-visitor-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_clips() -> list[Path]:
    clips = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not clips:
        raise SystemExit(f"no example clips in {EXAMPLES}")
    return clips


def clip_label(clip: Path, labels: list[str]) -> str:
    """The emotion in the example's file name (angry_actor17.flac -> angry), else the first label."""
    for part in clip.stem.split("_"):
        if part in labels:
            return part
    return labels[0]


class App:
    """`python app.py` as shipped, on 127.0.0.1:<free port>, database and media in `work`."""

    def __init__(self, work: Path, start_timeout: float = 240.0):
        self.work = work
        self.db = f"sqlite:///{work / 'corrections.db'}"
        self.media = work / "media"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = work / "app.log"
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "App":
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("EMODEMO_", "GRADIO_", "SPACE_")) and k != "SYSTEM"}
        env.update({"EMODEMO_MEDIA_DIR": str(self.media), "GRADIO_ANALYTICS_ENABLED": "False",
                    "HF_HUB_OFFLINE": "1"})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--db", self.db],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {self.start_timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(1)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Terminate a child (kill it after `grace` s) and reap it; nothing if it has exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def client(url: str, download_dir: Path):
    from gradio_client import Client
    return Client(url, verbose=False, download_files=str(download_dir), analytics_enabled=False,
                  max_workers=2, httpx_kwargs={"timeout": 60})


def visitor(i: int, url: str, clip: Path, label: str, start: threading.Barrier,
            timeout: float, download_dir: Path, annotator: Optional[str] = None) -> dict:
    """One visitor: connect, wait for the others, predict, then correct. Never raises."""
    from gradio_client import handle_file
    out = {"visitor": i, "clip": clip.name, "predict_s": None, "correct_s": None,
           "error": None, "label": None, "correction_id": None, "connect_s": None,
           "released": None, "finished": None}
    try:
        t0 = time.perf_counter()
        c = client(url, download_dir)
        out["connect_s"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - reported as a failure
        out["error"] = f"connect: {type(exc).__name__}: {exc}"
        start.abort()
        return out
    try:
        start.wait(timeout=timeout)
    except threading.BrokenBarrierError:
        pass
    out["released"] = time.perf_counter()
    step = "predict"
    try:
        t0 = time.perf_counter()
        res = c.submit(audio=handle_file(str(clip)), transcript="",
                       api_name="/predict").result(timeout=timeout)
        out["predict_s"] = time.perf_counter() - t0
        out["label"] = res["label"]
        step = "correct"
        t0 = time.perf_counter()
        stored = c.submit(audio=handle_file(str(clip)), label=label, transcript="",
                          annotator=annotator or f"{ANNOTATOR_PREFIX}{i}", note="", start=None, end=None,
                          prediction=res, api_name="/correct").result(timeout=timeout)
        out["correct_s"] = time.perf_counter() - t0
        out["correction_id"] = stored["id"]
    except Exception as exc:  # noqa: BLE001 - reported as a failure
        out["error"] = f"{step}: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        out["finished"] = time.perf_counter()
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
    return out


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "mean": float(a.mean())}


def run_load_test(visitors: int = 20, timeout: float = 300.0, start_timeout: float = 240.0,
                  work: Optional[Path] = None) -> dict:
    """Start the app, send the burst, stop the app; returns the measurements (see module doc)."""
    labels = json.loads((ROOT / "models" / "default" / "config.json").read_text())["labels"]
    clips = example_clips()
    own_tmp = None
    if work is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="emodemo-load-")
        work = Path(own_tmp.name)
    downloads = work / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    try:
        t_launch = time.perf_counter()
        with App(work, start_timeout=start_timeout) as app:
            started_s = time.perf_counter() - t_launch
            warm = visitor(-1, app.url, clips[0], labels[0], threading.Barrier(1), timeout,
                           downloads, annotator="load-warm-up")   # alone: the ASR is warm
            barrier = threading.Barrier(visitors)
            results: list[Optional[dict]] = [None] * visitors

            def run(i: int) -> None:
                clip = clips[i % len(clips)]
                results[i] = visitor(i, app.url, clip, clip_label(clip, labels), barrier, timeout,
                                     downloads)

            threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(visitors)]
            for t in threads:
                t.start()
            deadline = time.perf_counter() + 2 * timeout + 120
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.perf_counter()))
            results = [r or {"visitor": i, "error": "did not finish in time", "predict_s": None,
                             "correct_s": None, "correction_id": None}
                       for i, r in enumerate(results)]
            log_tail = app.log_tail(2000)
        stored = count_corrections(app.db, app.media)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    failed = [r for r in results if r["error"]]
    # the burst: from the visitors' release (all connected) to the last one done
    released = [r["released"] for r in results if r.get("released")]
    finished = [r["finished"] for r in results if r.get("finished")]
    wall = max(finished) - min(released) if released and finished else float("nan")
    connect = [r["connect_s"] for r in results if r.get("connect_s") is not None]
    pred = [r["predict_s"] for r in results if r["predict_s"] is not None]
    corr = [r["correct_s"] for r in results if r["correct_s"] is not None]
    both = [r["predict_s"] + r["correct_s"] for r in results
            if r["predict_s"] is not None and r["correct_s"] is not None]
    ok_requests = len(pred) + len(corr)
    return {
        "visitors": visitors, "clips": [c.name for c in clips], "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "app_start_s": started_s, "warm_up": warm,
        "wall_s": wall, "requests": 2 * visitors, "requests_ok": ok_requests,
        "failed_visitors": len(failed), "failures": [r["error"] for r in failed],
        "connect": percentiles(connect), "predict": percentiles(pred), "correct": percentiles(corr),
        "visitor": percentiles(both),
        "throughput_requests_per_s": ok_requests / wall if wall > 0 else None,
        "throughput_visitors_per_s": len(both) / wall if wall > 0 else None,
        "corrections_stored": stored["visitors"], "corrections_total": stored["total"],
        "distinct_ids": len({r["correction_id"] for r in results if r.get("correction_id")}),
        "results": results, "app_log_tail": log_tail if failed else "",
    }


def count_corrections(db: str, media: Path) -> dict:
    """Corrections in the database afterwards: all, and those from the burst's visitors."""
    from emodemo.store import CorrectionStore
    with CorrectionStore(db, media_dir=media) as store:
        rows = store.corrections()
    return {"total": len(rows),
            "visitors": sum(1 for r in rows
                            if str(r["annotator"] or "").startswith(ANNOTATOR_PREFIX))}


def report(r: dict) -> str:
    """A markdown summary of run_load_test()'s result."""
    def row(name: str, p: dict) -> str:
        if not p.get("n"):
            return f"| {name} | 0 | – | – | – |"
        return f"| {name} | {p['n']} | {p['p50']:.2f} | {p['p95']:.2f} | {p['max']:.2f} |"

    def num(x: Optional[float], digits: int = 2) -> str:
        return "–" if x is None or x != x else f"{x:.{digits}f}"

    warm = r["warm_up"]
    lines = [
        f"{r['visitors']} visitors at once, {r['requests']} requests "
        f"({r['requests_ok']} succeeded), {r['failed_visitors']} failed visitor(s); "
        f"corrections stored: {r['corrections_stored']} of {r['visitors']} "
        f"({r['distinct_ids']} distinct ids). Burst (release to last visitor done) "
        f"{num(r['wall_s'], 1)} s: {num(r['throughput_requests_per_s'])} requests/s, "
        f"{num(r['throughput_visitors_per_s'])} visitors/s. App start {num(r['app_start_s'], 1)} s, "
        f"warm-up prediction {num(warm['predict_s'])} s; {r['cpu_count']} CPU "
        f"cores, 1-min load average before the run {r['load_average_before']:.1f}.",
        "",
        "| latency (s) | n | p50 | p95 | max |",
        "|---|---|---|---|---|",
        row("`/predict` (with ASR)", r["predict"]),
        row("`/correct`", r["correct"]),
        row("visitor (predict + correct)", r["visitor"]),
        row("connect (`Client(url)`, before the burst)", r["connect"]),
    ]
    if r["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in r["failures"]]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visitors", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    p.add_argument("--start-timeout", type=float, default=240.0,
                   help="seconds for the app to start (default 240)")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args(argv)
    if args.visitors < 1:
        p.error("--visitors must be at least 1")
    r = run_load_test(args.visitors, args.timeout, args.start_timeout)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    print(report(r))
    if r["app_log_tail"]:
        print("\napp log (tail):\n" + r["app_log_tail"], file=sys.stderr)
    ok = r["failed_visitors"] == 0 and r["corrections_stored"] == r["visitors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
