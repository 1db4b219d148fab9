"""The fine-tuning job's shared state (emodemo.jobs, contract C6): on disk, seen by every app
process, one run at a time across processes, an outcome kept until the next run, and a run
whose process died reading "interrupted". The fine-tuning itself is replaced by a scripted
stand-in that reports progress (the real one is tested in test_finetune.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from emodemo import jobs
from emodemo.errors import EmodemoError

# One "app" process running a fine-tuning job: finetune() is a stand-in that steps through
# progress until the file GO exists, then returns the outcome MODE (write / refuse / fail).
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import emodemo.finetune as F
    from emodemo import jobs
    from emodemo.errors import EmodemoError

    models, mode, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    def stand_in(corrections, base, out, progress=None, **kw):
        i = 0
        while not go.exists():
            progress(min(0.9, i / 100), f"step {i // 20}")
            i += 1
            time.sleep(0.02)
        if mode == "fail":
            raise EmodemoError("too few corrections of sad")
        return {"written": mode == "write", "reason": "did not beat the base"}

    F.finetune = stand_in
    lock = jobs.RunLock(models)
    if not lock.acquire():
        print(jobs.ALREADY_RUNNING, flush=True)
        sys.exit(3)
    job = jobs.FinetuneJob(base=models / "default", out=models / "tuned", models_dir=models,
                           lock=lock).start(None)
    job.wait()
    print("ended", job.state, flush=True)
""")


def _app(models: Path, mode: str, go: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(models), mode, str(go)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_for(models: Path, status: str, timeout: float = 60.0) -> jobs.JobState:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.read_state(models)
        if st.status == status and (status != "running" or st.progress > 0):
            return st
        time.sleep(0.1)
    raise AssertionError(f"state never became {status}: {jobs.read_state(models)}")


def _read_in_new_process(models: Path) -> dict:
    code = ("import json, sys; from dataclasses import asdict; from emodemo import jobs; "
            "print(json.dumps(asdict(jobs.read_state(sys.argv[1]))))")
    r = subprocess.run([sys.executable, "-c", code, str(models)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    import json
    return json.loads(r.stdout)


@pytest.mark.slow
def test_two_app_processes_share_one_run_and_its_outcome(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    assert jobs.read_state(models) == jobs.JobState()            # nothing ran yet: idle
    go = tmp_path / "go"
    first = _app(models, "write", go)
    try:
        st = _wait_for(models, "running")                       # seen from another process
        assert st.bundle == "tuned" and st.message.startswith("step") and st.started
        second = _app(models, "write", go)                       # a second app asks to run
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 3 and jobs.ALREADY_RUNNING in out
        assert _read_in_new_process(models)["status"] == "running"
        go.touch()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0 and "ended written" in out, err
    finally:
        first.kill()
    done = jobs.read_state(models)
    assert (done.status, done.progress, done.bundle) == ("finished", 1.0, "tuned")
    assert done.finished >= done.started and "written" in done.detail
    assert _read_in_new_process(models) == jobs.read_state(models).__dict__  # a restarted app


@pytest.mark.slow
def test_a_run_killed_by_a_restart_reads_interrupted_and_a_new_run_can_start(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    go = tmp_path / "go"
    victim = _app(models, "write", go)
    try:
        _wait_for(models, "running")
    finally:
        victim.send_signal(signal.SIGKILL)                      # the app dies mid-run
        victim.wait(timeout=30)
    st = jobs.read_state(models)
    assert st.status == "interrupted" and st.reason == jobs.INTERRUPTED
    assert _read_in_new_process(models)["status"] == "interrupted"
    go.touch()                                                  # the next run finishes at once
    again = _app(models, "refuse", go)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    st = jobs.read_state(models)
    assert st.status == "refused" and "did not beat the base" in st.reason


def test_outcomes_are_kept_and_failures_say_why(tmp_path, monkeypatch):
    import emodemo.finetune as F

    models = tmp_path / "models"

    def failing(corrections, base, out, progress=None, **kw):
        progress(0.3, "training the text branch")
        raise EmodemoError("too few corrections of sad")

    monkeypatch.setattr(F, "finetune", failing)
    lock = jobs.RunLock(models)
    assert lock.acquire()
    assert not jobs.RunLock(models).acquire()                   # one run at a time
    job = jobs.FinetuneJob(base=models / "default", out=models / "t2", models_dir=models, lock=lock)
    job.start(None).wait(30)
    st = jobs.read_state(models)
    assert (st.status, st.reason, st.bundle) == ("failed", "too few corrections of sad", "t2")
    assert st.progress == pytest.approx(0.3) and "training the text branch" in st.detail
    other = jobs.RunLock(models)                                # the lock is free again
    assert other.acquire()
    other.release()
    assert jobs.read_state(models).status == "failed"           # still there for every visitor


def test_finetuner_refuses_a_second_run_held_elsewhere(tmp_path):
    models = tmp_path / "models"
    (models / "default").mkdir(parents=True)

    class Registry:                                             # the parts start() reads
        new_bundles_dir = models

        def check_admin(self, token):
            pass

        def new_bundle_folder(self, name):
            return models / name

        def active_path(self):
            return models / "default"

    holder = jobs.RunLock(models)                               # another process's run
    assert holder.acquire()
    try:
        ft = jobs.Finetuner(Registry(), store=None)
        with pytest.raises(EmodemoError, match="already going"):
            ft.start("tuned", epochs=1, min_per_class=1)
    finally:
        holder.release()


def test_state_file_is_beside_the_models_folder_and_bad_files_read_idle(tmp_path):
    models = tmp_path / "models"
    assert jobs.state_path(models).parent == tmp_path
    jobs.state_path(models).write_text("{not json", encoding="utf-8")
    assert jobs.read_state(models).status == "idle"
    jobs.write_state(models, jobs.JobState(status="finished", progress=1.0, bundle="x"))
    assert jobs.read_state(models).bundle == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
