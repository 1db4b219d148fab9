"""The machine a benchmark runs on: CPU, library versions and thread settings, other processes
using the CPU meanwhile (contention), and memory probes (RSS, peak RSS over a block)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import threading
import time
from pathlib import Path
from typing import Optional


def machine_info() -> dict:
    """CPU model, cores, library versions, thread settings and what else is using the CPU."""
    cpu = ""
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["mem_total_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
                                         .group(1)) / 2 ** 20, 1)
    except (OSError, AttributeError):
        pass
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()          # torch's own default (the "before")
    from emodemo.recognizer import DEFAULT_THREADS, env_threads
    info["emodemo_torch_threads"] = env_threads() or DEFAULT_THREADS
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "EMODEMO_TORCH_THREADS", "EMODEMO_ASR_THREADS")
                   if k in os.environ}
    for mod in ("transformers", "ctranslate2", "faster_whisper", "torchaudio"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    from emodemo.asr import ctranslate2_threads
    info["asr_threads"] = ctranslate2_threads()
    info["load_avg_start"] = list(os.getloadavg())
    return info


def _cpu_ticks() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime + stime ticks, parent pid, command line) for every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d.name)] = (int(fields[11]) + int(fields[12]), int(fields[1]), cmd or stat.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def contention(window: float = 0.5, min_cpu: float = 20.0) -> list[str]:
    """Other processes using more than `min_cpu` % of a core over `window` seconds (training runs,
    test suites) — they make the numbers noisy. This process and its children are left out."""
    try:
        a = _cpu_ticks()
        time.sleep(window)
        b = _cpu_ticks()
    except OSError:
        return []
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    mine = {os.getpid()}
    changed = True
    while changed:                      # our process tree
        changed = False
        for pid, (_, ppid, _) in b.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    out = []
    for pid, (t, _, cmd) in b.items():
        if pid in mine or pid not in a:
            continue
        cpu = 100.0 * (t - a[pid][0]) / hz / window
        if cpu >= min_cpu:
            out.append(f"{cmd[:120]} ({cpu:.0f}% CPU)")
    return out


class ContentionLog:
    """Samples `contention()` between benchmark sections; `seen` keeps every busy process once."""

    def __init__(self):
        self.samples: list[dict] = []

    def sample(self, where: str) -> list[str]:
        busy = contention()
        self.samples.append({"where": where, "load1": os.getloadavg()[0], "busy": busy})
        return busy

    @property
    def seen(self) -> list[str]:
        names: dict[str, None] = {}
        for s in self.samples:
            for b in s["busy"]:
                names.setdefault(re.sub(r" \(\d+% CPU\)$", "", b), None)
        return list(names)

# ---- memory --------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    try:
        return _status_kb("VmRSS") / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def maxrss_mb() -> float:
    """Peak RSS of this process (MB): VmHWM from /proc/self/status.

    Not `resource.getrusage().ru_maxrss`: Linux carries ru_maxrss across fork+exec, so a child
    started from a big parent reports the parent's size (here the benchmark process with the peer
    models loaded: ~1.9 GB instead of ~1 GB). VmHWM belongs to the exec'd address space.
    """
    try:
        return _status_kb("VmHWM") / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Peak RSS over a block: resets the kernel's high-water mark (/proc/self/clear_refs = 5) and
    reads VmHWM at the end; where that is not allowed, a 5-ms sampling thread is used instead."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "PeakRSS":
        self.start = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampling"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = _status_kb("VmHWM") / 1024
        self.peak = max(self.peak, rss_mb())

