"""The app started the way a Hugging Face Space starts it.

A Space runs `python app.py` in the repository with `SYSTEM=spaces` and `SPACE_ID` set, installs
the apt packages of packages.txt, and (with persistent storage) gives the app a writable folder.
Here: the same command and variables, a temporary folder as the persistent storage (through the
app's own settings, EMODEMO_DB and EMODEMO_MODELS_DIR), a free localhost port, and one prediction
and one correction through `gradio_client` on a committed example clip (with sign-in turned off
through the app's setting, so a typed annotator name is recorded), and, with sign-in on as
README's `hf_oauth: true` makes it, a correction without a signed-in session refused.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, AppProcess, free_port
from test_deploy import front_matter

CLIP = ROOT / "data" / "examples" / "angry_actor17.flac"
START_TIMEOUT = 240        # imports, model bundle, ASR preload: slow on 2 busy cores
CALL_TIMEOUT = 180
# every program the app may run, and the Debian package that provides it
APT_PACKAGE = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "espeak-ng": "espeak-ng",
               "sox": "sox"}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def runtime_binaries() -> dict[str, set[str]]:
    """Programs that app.py and the emodemo package look up (`shutil.which("x")`) or run
    (`subprocess.run(["x", ...])`), found in the syntax tree: name -> files."""
    found: dict[str, set[str]] = {}
    for path in [ROOT / "app.py", *sorted((ROOT / "emodemo").rglob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            arg = node.args[0]
            prog = None
            if name == "which" and isinstance(arg, ast.Constant):
                prog = arg.value
            elif name in SUBPROCESS_CALLS and isinstance(arg, (ast.List, ast.Tuple)) and arg.elts \
                    and isinstance(arg.elts[0], ast.Constant):
                prog = arg.elts[0].value
            if isinstance(prog, str):
                found.setdefault(prog, set()).add(str(path.relative_to(ROOT)))
    return found


def packages_txt() -> set[str]:
    return {ln.strip() for ln in (ROOT / "packages.txt").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")}


def test_packages_txt_lists_every_program_the_app_runs():
    found = runtime_binaries()
    assert {"ffmpeg", "ffprobe"} <= set(found), found     # the decoder fallback is seen
    unknown = sorted(set(found) - set(APT_PACKAGE))
    assert not unknown, (f"the app runs {unknown} ({[sorted(found[u]) for u in unknown]}): add "
                         "its Debian package to packages.txt and to APT_PACKAGE here")
    missing = {APT_PACKAGE[b] for b in found} - packages_txt()
    assert not missing, f"packages.txt lacks {sorted(missing)} (the app runs {sorted(found)})"


def space_env(persistent: Path, port: int, sign_in: bool) -> dict[str, str]:
    """The environment of a Space (SYSTEM, SPACE_ID, ...), with the persistent folder handed to
    the app through its settings, and the server kept on localhost. With README's `hf_oauth: true`
    the Space sets the OAuth variables, and the app asks annotators to sign in; `sign_in=False`
    turns that off through the app's setting (EMODEMO_SIGN_IN=0)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EMODEMO_", "GRADIO_", "SPACE_", "OAUTH_"))
           and k not in ("SYSTEM", "OPENID_PROVIDER_URL", "HF_TOKEN")}
    env.update({
        "SYSTEM": "spaces", "SPACE_ID": "emodemo-tests/emodemo", "SPACE_AUTHOR_NAME": "emodemo-tests",
        "SPACE_REPO_NAME": "emodemo", "SPACE_HOST": "emodemo-tests-emodemo.hf.space",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",      # a Space binds 0.0.0.0; this test stays local
        "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
        "EMODEMO_DB": f"sqlite:///{persistent / 'emodemo' / 'corrections.db'}",
        "EMODEMO_MODELS_DIR": str(persistent / "emodemo" / "models"),
    })
    if front_matter().get("hf_oauth"):       # what a Space with `hf_oauth: true` sets
        env.update({"OAUTH_CLIENT_ID": "test-client", "OAUTH_CLIENT_SECRET": "test-secret",
                    "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "https://huggingface.co"})
    if not sign_in:
        env["EMODEMO_SIGN_IN"] = "0"
    return env


def start_space(tmp: Path, sign_in: bool):
    """`python app.py` with a Space's environment, as a context manager: (app, persistent folder)."""
    persistent = tmp / "data"
    persistent.mkdir()
    port = free_port()
    app = AppProcess([], space_env(persistent, port, sign_in), tmp / "app.log", port=port,
                     start_timeout=START_TIMEOUT)
    return app, persistent


@pytest.fixture
def space(tmp_path_factory):
    """The Space with sign-in off (EMODEMO_SIGN_IN=0), so a typed annotator name is recorded;
    yields (url, persistent folder)."""
    app, persistent = start_space(tmp_path_factory.mktemp("space"), sign_in=False)
    with app:
        yield app.wait_ready().url, persistent


@pytest.mark.slow
def test_space_predicts_and_stores_in_persistent_storage(space, tmp_path):
    from gradio_client import Client, handle_file
    from emodemo.store import CorrectionStore
    url, persistent = space
    labels = json.loads((ROOT / "models" / "default" / "config.json").read_text())["labels"]
    client = Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/correct"} <= set(named)

    res = client.submit(handle_file(str(CLIP)), "", api_name="/predict").result(timeout=CALL_TIMEOUT)
    assert res["label"] in labels
    for branch in ("audio", "fused"):
        assert set(res[branch]) == set(labels)
        assert sum(res[branch].values()) == pytest.approx(1.0, abs=1e-3)
    assert res["transcript"].strip(), "ASR gave no words for a clear English sentence"

    out = client.submit(handle_file(str(CLIP)), "angry", "", "space-visitor", "", None, None, res,
                        api_name="/correct").result(timeout=CALL_TIMEOUT)
    db = persistent / "emodemo" / "corrections.db"
    assert db.is_file(), "the corrections database is not in the persistent folder"
    with CorrectionStore(f"sqlite:///{db}") as store:
        rec = store.get(out["id"])
        assert rec is not None and rec["label"] == "angry" and rec["annotator"] == "space-visitor"
    kept = [p for p in (persistent / "emodemo" / "media").rglob("*") if p.is_file()]
    assert len(kept) == 1 and kept[0].stat().st_size > 0, "the clip is not in persistent storage"


@pytest.mark.slow
def test_space_with_sign_in_refuses_a_correction_without_a_session(tmp_path):
    """README's front matter has `hf_oauth: true`: on the Space annotators sign in, and `/correct`
    from a client without a signed-in session is refused with a message that says what to do;
    nothing is stored."""
    from gradio_client import Client, handle_file
    assert front_matter().get("hf_oauth") is True
    app, persistent = start_space(tmp_path, sign_in=True)
    with app:
        app.wait_ready()
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "dl"),
                        analytics_enabled=False)
        with pytest.raises(Exception, match="Sign in with your Hugging Face account") as info:
            client.submit(handle_file(str(CLIP)), "angry", "", "space-visitor", "", None, None, None,
                          api_name="/correct").result(timeout=CALL_TIMEOUT)
        assert "Traceback" not in str(info.value)
    db = persistent / "emodemo" / "corrections.db"
    from emodemo.store import CorrectionStore
    with CorrectionStore(f"sqlite:///{db}") as store:
        assert store.corrections() == []
