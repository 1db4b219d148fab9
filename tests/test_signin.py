"""Annotators who sign in with Hugging Face: the account is the identity, a typed name never is.

Off a Space, Gradio mocks OAuth: `/login/huggingface` signs the browser in as the machine's own
Hugging Face user (looked up once with `huggingface_hub.whoami`). That lookup is the only part
replaced here (this machine is offline and logged out); Gradio's login routes, its signed session
cookie and the `gr.OAuthProfile` it injects into the correct handler are the real ones."""
from __future__ import annotations


import pytest

from conftest import ROOT, served

CLIP = ROOT / "data" / "examples" / "angry_actor17.flac"
USER = {"type": "user", "name": "alice-hf", "fullname": "Alice Example",
        "avatarUrl": "https://example.org/alice.png"}


class OneLineASR:
    def transcribe(self, wav):
        return "kids are talking by the door"


@pytest.fixture(scope="module")
def fast_rec(recognizer):
    from emodemo.recognizer import EmotionRecognizer
    return EmotionRecognizer(recognizer.config, recognizer.speech, recognizer.text_model,
                             asr=OneLineASR())


def test_handlers_record_the_account_never_a_typed_name(fast_rec, store):
    from emodemo.errors import EmodemoError
    from emodemo.ui import Handlers
    signed = Handlers(fast_rec, store, sign_in=True, work_dir=store.db_file.parent / "w")
    state = signed.analyse(str(CLIP), 0.5)["state"]
    refused = signed.correct(state, "sad", "mallory", None, None, 0.5)     # typed, not signed in
    assert "Sign in with your Hugging Face account" in refused["correct_msg"]
    with pytest.raises(EmodemoError, match="Sign in"):
        signed.api_correct(str(CLIP), "sad", annotator="mallory")
    assert store.corrections() == []
    out = signed.correct(state, "sad", "mallory", None, None, 0.5, account="alice-hf")
    row = store.get(out["stored_id"])
    assert (row.annotator, row.annotator_account) == ("alice-hf", "alice-hf")
    assert "alice-hf" in out["correct_msg"] and "mallory" not in out["correct_msg"]
    cid = signed.api_correct(str(CLIP), "angry", annotator="mallory", account="bob-hf")["id"]
    assert store.get(cid).annotator_account == "bob-hf"
    # local use without sign-in: the optional typed name, no account
    local = Handlers(fast_rec, store, work_dir=store.db_file.parent / "w")
    row = store.get(local.correct(state, "happy", "  ana ", None, None, 0.5)["stored_id"])
    assert (row.annotator, row.annotator_account) == ("ana", None)
    hist = local.history("all", "bob-hf")["history"]          # accounts are searchable
    assert list(hist["id"]) == [cid]


def _session_cookie(base: str) -> str:
    """Sign in through the app's own login route (Gradio's local mock); the session cookie."""
    import httpx
    url = base + "/login/huggingface"
    for _ in range(5):
        r = httpx.get(url, follow_redirects=False, timeout=30)
        if "session=" in r.headers.get("set-cookie", ""):
            return r.headers["set-cookie"].split(";")[0]
        assert r.status_code in (302, 307), (r.status_code, r.text[:300])
        loc = r.headers["location"]
        url = loc if loc.startswith("http") else base + loc
    raise AssertionError("the login route never set a session cookie")


@pytest.mark.slow
def test_launched_app_signs_in_with_mocked_oauth(fast_rec, store, monkeypatch):
    """build_app(sign_in=True) launched on localhost: a LoginButton and no name box; /correct
    records the signed-in account (the typed annotator is ignored) and refuses without a session;
    /predict stays open to everyone."""
    import gradio.oauth
    from gradio_client import Client, handle_file

    from emodemo.settings import Settings
    from emodemo.ui import build_app
    monkeypatch.setattr(gradio.oauth, "get_token", lambda: "hf_local_test_token")
    monkeypatch.setattr(gradio.oauth, "whoami", lambda *a, **k: dict(USER))
    assert not build_app(Settings(preload_asr=False), fast_rec, store).expects_oauth        # local default: no sign-in
    demo = build_app(Settings(sign_in=True, preload_asr=False), fast_rec, store)
    import gradio as gr
    login = [b for b in demo.blocks.values() if isinstance(b, gr.LoginButton)]
    assert [b.elem_id for b in login] == ["emodemo-login"] and demo.expects_oauth
    comps = {c["props"].get("elem_id"): c for c in demo.config["components"]}
    assert comps["emodemo-annotator"]["props"]["visible"] is False
    with served(demo) as base:
        cookie = _session_cookie(base)
        signed = Client(base + "/", verbose=False, headers={"Cookie": cookie})
        out = signed.predict(handle_file(str(CLIP)), "sad", "", "mallory", "", None, None, None,
                             api_name="/correct")
        row = store.get(out["id"])
        assert (row.annotator, row.annotator_account) == ("alice-hf", "alice-hf")
        anonymous = Client(base + "/", verbose=False)
        with pytest.raises(Exception, match="Sign in with your Hugging Face account"):
            anonymous.predict(handle_file(str(CLIP)), "sad", "", "alice-hf", "", None, None, None,
                              api_name="/correct")
        assert len(store.corrections()) == 1
        assert anonymous.predict(handle_file(str(CLIP)), api_name="/predict")["label"] in fast_rec.labels


def test_sign_in_setting():
    """On by itself on a Space with OAuth (hf_oauth: true sets OAUTH_CLIENT_ID), else off;
    EMODEMO_SIGN_IN and --sign-in / --no-sign-in override."""
    import app
    from emodemo.settings import Settings
    space = {"SPACE_ID": "team/emodemo", "OAUTH_CLIENT_ID": "x"}
    assert not Settings.from_env({}).sign_in_enabled
    assert not Settings.from_env({"SPACE_ID": "team/emodemo"}).sign_in_enabled   # no hf_oauth
    assert Settings.from_env(space).sign_in_enabled
    assert not Settings.from_env({**space, "EMODEMO_SIGN_IN": "0"}).sign_in_enabled
    assert Settings.from_env({"EMODEMO_SIGN_IN": "1"}).sign_in_enabled
    env = Settings.from_env(space)
    assert not app.settings_from(app.parse_args(["--no-sign-in"], env), env).sign_in_enabled
    env = Settings.from_env({})
    assert app.settings_from(app.parse_args(["--sign-in"], env), env).sign_in_enabled
    assert not app.settings_from(app.parse_args([], env), env).sign_in_enabled
