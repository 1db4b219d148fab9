import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT
from emodemo.bundle import DEFAULT_BUNDLE, LABELS
from emodemo.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "emodemo", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_predict_json_and_table(speech_wav, speech_mp3, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    # --asr tiny.en: the English-only, faster ASR (the default Whisper base: test_multilingual)
    r = run("predict", str(speech_wav), str(bad), str(speech_mp3), "--json", "--asr", "tiny.en")
    assert r.returncode == 1                               # one bad file → non-zero exit ...
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert [l["file"] for l in lines] == [str(speech_wav), str(speech_mp3)]   # ... others still done
    for l in lines:
        assert set(l["audio"]) == set(l["fused"]) == set(l["text"]) and "happy" in l["transcript"].lower()
        assert l["language"] == {"code": "en", "name": "English", "probability": 1.0}
        assert l["translation"] == "" and 0.5 < l["asr_trust"] <= 1.0 and 0.0 <= l["margin"] <= 1.0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "notes.wav" in err[0] and "Traceback" not in r.stderr
    t = run("predict", str(speech_wav), "--no-asr")
    assert t.returncode == 0 and "audio" in t.stdout and "fused" in t.stdout and "transcript: (none)" in t.stdout


@pytest.mark.slow
def test_missing_bundle_is_one_line(tmp_path, speech_wav):
    r = run("predict", str(speech_wav), "--bundle", str(tmp_path))
    assert r.returncode == 2 and "not a model bundle" in r.stderr and "Traceback" not in r.stderr


def one_error_line(capsys, code, want):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and want in err[0], err


def test_input_mistakes_are_one_error_line_exit_2(tmp_path, capsys, monkeypatch):
    """A bad bundle config key, a missing or broken recipe file, a bad data spec: one `error:`
    line and exit 2, never a traceback."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cfg = json.loads((DEFAULT_BUNDLE / "config.json").read_text())
    cfg["speech"]["hiden"] = 256
    (bundle / "config.json").write_text(json.dumps(cfg))
    one_error_line(capsys, main(["predict", "x.wav", "--bundle", str(bundle)]), "speech.hiden")
    one_error_line(capsys, main(["train", "--config", str(tmp_path / "missing.json")]), "missing.json")
    (tmp_path / "broken.json").write_text("{\"speech\": ")
    one_error_line(capsys, main(["train", "--config", str(tmp_path / "broken.json")]), "not valid JSON")
    import emodemo.recognizer as R
    monkeypatch.setattr(R, "load_recognizer", lambda bundle: SimpleNamespace(labels=LABELS))
    one_error_line(capsys, main(["evaluate", "--data", "no-such-corpus:dev"]), "unknown data spec")


@pytest.mark.slow
def test_bad_settings_variable_is_one_line(tmp_path):
    """EMODEMO_ASR_THREADS read below the entry point (the ASR of `queue add`): one line, exit 2."""
    import os
    env = {**os.environ, "EMODEMO_ASR_THREADS": "many"}
    r = subprocess.run([sys.executable, "-m", "emodemo", "queue", "add", "--db",
                        f"sqlite:///{tmp_path / 'q.db'}", "--media-dir", str(tmp_path / "media"),
                        "--bundle", str(DEFAULT_BUNDLE), str(ROOT / "data" / "examples" / "angry_actor17.flac")],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert err == ["error: EMODEMO_ASR_THREADS='many' is not a number"]


def test_empty_queue_lists_nothing(tmp_path, capsys):
    """`queue list` on a database with no clips queued yet: no output, exit 0 (was a traceback)."""
    assert main(["queue", "list", "--db", f"sqlite:///{tmp_path / 'q.db'}"]) == 0
    assert capsys.readouterr().out == ""


def test_one_sided_batches_earn_a_note_and_spread_ones_do_not():
    from emodemo.analysis import ONE_SIDED_CLIPS, one_sided
    assert one_sided(["neutral"] * (ONE_SIDED_CLIPS - 1)) is None              # too few to say
    note = one_sided(["neutral"] * 7 + ["happy"] * 3)
    assert note.startswith("7 of 10 clips were called neutral") and "voice, language or microphone" in note
    assert one_sided(["neutral", "happy", "sad", "angry"] * 3) is None


@pytest.mark.slow
def test_predict_notes_a_batch_called_one_label_on_stderr(tmp_path):
    """Nine flat espeak-ng Polish sentences (the shipped default calls flat synthetic speech
    neutral): `predict` says that 9 of 9 were called one label and what to try, on stderr, so
    --json output stays one JSON object a line; with --normalize batch it does not suggest it;
    `queue add` says it of the pre-labels."""
    from conftest import espeak
    files = [str(espeak(f"To jest zdanie numer {i}, powiedziane spokojnie.", tmp_path / f"c{i}.wav", voice="pl"))
             for i in range(9)]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "emodemo", "predict", "--no-asr", "--json", *extra,  # noqa: E731
                                         *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = run()
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 9 and {r["label"] for r in rows} == {"neutral"}
    assert "note: 9 of 9 clips were called neutral" in out.stderr and "--normalize batch" in out.stderr
    batch = run("--normalize", "batch")
    assert batch.returncode == 0 and "clips were called" in batch.stderr and "--normalize batch" not in batch.stderr
    few = subprocess.run([sys.executable, "-m", "emodemo", "predict", "--no-asr", *files[:3]], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert few.returncode == 0 and "note:" not in few.stderr
    queued = subprocess.run([sys.executable, "-m", "emodemo", "queue", "add", "--no-asr", "--db",
                             f"sqlite:///{tmp_path / 'q.db'}", *files], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)           # the queue's pre-labels: the same rule
    assert queued.returncode == 0 and "queued 9 clips" in queued.stdout
    assert "note: Pre-labels: 9 of 9 clips were called neutral" in queued.stderr
