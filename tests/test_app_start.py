"""`python app.py` as a person starts it: a quiet start-up (one line per real event: model
loaded, store location, URL; library chatter only with --verbose), and `/predict` through
gradio_client with the audio alone (the transcript is optional)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import ROOT, AppProcess, free_port

CLIP = ROOT / "data" / "examples" / "angry_actor17.flac"
START_TIMEOUT = 150        # imports, model bundle (slow on 2 shared cores)
LIBRARY_CHATTER = ("LOAD REPORT", "alembic", "HTTP Request", "httpx", "Loading weights",
                   "To create a public link")


def start_app(tmp: Path, *args: str) -> AppProcess:
    """`python app.py ARGS` on a free port with a temporary database; output captured."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EMODEMO_", "SPACE_", "OAUTH_", "GRADIO_SERVER"))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", EMODEMO_MEDIA_DIR=str(tmp / "media"),
               PYTHONUNBUFFERED="1")
    return AppProcess(["--port", str(port), "--db", f"sqlite:///{tmp / 'corrections.db'}",
                       "--no-preload-asr", *args], env, tmp / "app.log", port=port, cwd=tmp,
                      start_timeout=START_TIMEOUT)


def url_written(output: str) -> bool:
    return "running on" in output


@pytest.mark.slow
def test_quiet_start_and_predict_with_audio_alone(tmp_path):
    from gradio_client import Client, handle_file
    app = start_app(tmp_path)
    try:
        app.wait_ready(url_written)
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "dl"))
        info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/predict"]
        transcript = next(p for p in info["parameters"] if p["parameter_name"] == "transcript")
        assert transcript["parameter_has_default"] and not transcript["parameter_default"]
        res = client.predict(handle_file(str(CLIP)), api_name="/predict")   # no transcript: ASR
        assert res["label"] in res["fused"] and res["label"] == max(res["fused"], key=res["fused"].get)
        assert res["text"] is None or set(res["text"]) == set(res["fused"])
        assert isinstance(res["transcript"], str)
        typed = client.predict(handle_file(str(CLIP)), "I am furious with you", api_name="/predict")
        assert typed["transcript"] == "I am furious with you" and typed["text"] is not None
    finally:
        out = app.stop()
    lines = [l for l in out.splitlines() if l.strip() and not l.startswith("Keyboard interruption")]
    for chatter in LIBRARY_CHATTER:
        assert chatter not in out, f"{chatter!r} in the default start-up output:\n{out}"
    events = {"model": r"model default v\S+ loaded from", "store": r"corrections in CorrectionStore\(",
              "url": rf"running on http://127\.0\.0\.1:{app.port}/"}
    for what, pattern in events.items():
        assert len([l for l in lines if re.search(pattern, l)]) == 1, (what, out)
    assert len(lines) == len(events), f"one line per event expected:\n{out}"


@pytest.mark.slow
def test_verbose_start_shows_library_logs(tmp_path):
    app = start_app(tmp_path, "--verbose")
    try:
        app.wait_ready(url_written)
    finally:
        out = app.stop()
    assert "alembic.runtime.migration" in out          # schema migrations on the new database
    assert "HTTP Request" in out                        # Gradio's start-up check through httpx
    assert re.search(rf"running on http://127\.0\.0\.1:{app.port}/", out)
