"""The app in a real browser: `python app.py` on a free localhost port with a temporary
database, driven by headless Chromium through Selenium.

Upload a clip, wait for the plots, move the fusion slider, edit the transcript and re-run the
text branch, pick a label, submit a correction, see it in the History tab, and check the row in
the database. A screenshot is left at /tmp/emodemo-browser.png.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, AppProcess, free_port

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("chromium and chromedriver are not installed "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CLIP = ROOT / "data" / "examples" / "angry_actor17.flac"
SCREENSHOT = Path("/tmp/emodemo-browser.png")
START_TIMEOUT = 150        # app start: imports, model bundle, ASR preload (slow on 2 cores)
STEP_TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` in a subprocess; yields (url, database url)."""
    tmp = tmp_path_factory.mktemp("app")
    db = f"sqlite:///{tmp / 'corrections.db'}"
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "EMODEMO_MEDIA_DIR": str(tmp / "media")}
    env.pop("SPACE_ID", None)
    with AppProcess(["--port", str(port), "--db", db], env, tmp / "app.log", port=port,
                    start_timeout=START_TIMEOUT) as app:
        yield app.wait_ready().url, db


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    opts = Options()
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1400,1700"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


@pytest.mark.slow
def test_upload_rerun_correct_in_browser(server, driver):
    url, db = server
    d = driver
    wait = WebDriverWait(d, STEP_TIMEOUT)

    def el(sel):
        return d.find_element(By.CSS_SELECTOR, sel)

    def text(sel):
        try:
            return el(sel).text
        except Exception:  # noqa: BLE001 - re-rendered while reading
            return ""

    d.get(url)
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#emodemo-audio input[type=file]"))

    # upload -> analysis runs on change: plots render, transcript appears
    el("#emodemo-audio input[type=file]").send_keys(str(CLIP))
    wait.until(lambda _: "angry_actor17.flac" in text("#emodemo-status"))
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#emodemo-probs .js-plotly-plot"))
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#emodemo-wave .js-plotly-plot"))
    assert "Analysed" in text("#emodemo-status")
    assert "·" in text("#emodemo-summary") and "%" in text("#emodemo-summary")
    legend = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR,
                                                      "#emodemo-probs .legendtext"))
    assert "audio branch" in legend and "fused" in legend

    # the fusion slider re-fuses live
    slider = el("#emodemo-weight input[type=range]")
    start = float(slider.get_attribute("value"))
    slider.send_keys(Keys.LEFT)                    # one 0.05 step towards the text branch
    moved = f"audio weight {start - 0.05:.2f}"
    wait.until(lambda _: moved in text("#emodemo-summary"))

    # edit the transcript (with markup, which must show as text) and re-run the text branch
    box = el("#emodemo-transcript textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("I am so sad and tired <b>today</b>")
    el("#emodemo-rerun").click()
    wait.until(lambda _: "sad and tired" in text("#emodemo-summary"))
    assert "<b>today</b>" in text("#emodemo-summary")          # shown literally, not bold
    assert not d.find_elements(By.CSS_SELECTOR, "#emodemo-summary b:not(strong)")
    assert "Re-ran the text branch" in text("#emodemo-status")

    # pick a label, name the annotator, submit
    options = d.find_elements(By.CSS_SELECTOR, "#emodemo-label label")
    next(o for o in options if o.text.strip().endswith("sad")).click()
    el("#emodemo-annotator input, #emodemo-annotator textarea").send_keys("selenium")
    el("#emodemo-submit").click()
    try:
        el("#emodemo-submit").click()      # a double click stores one correction (checked below)
    except Exception:  # noqa: BLE001 - the button is off while the first one is stored
        pass
    wait.until(lambda _: any(w in text("#emodemo-correct-msg") for w in
                             ("Stored correction", "Already stored", "Stored as correction")))
    assert "#1" in text("#emodemo-correct-msg")
    wait.until(lambda _: not d.find_elements(By.CSS_SELECTOR, "#emodemo-label input:checked"))
    el("#emodemo-correct-msg").location_once_scrolled_into_view
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(SCREENSHOT))

    # an example clip is one click away (replaces the upload and re-analyses)
    next(b for b in d.find_elements(By.CSS_SELECTOR, "button")
         if b.text.strip() == "happy · English · RAVDESS").click()
    wait.until(lambda _: "happy_actor18.flac" in text("#emodemo-status"))
    assert text("#emodemo-correct-msg") == ""       # the old confirmation is cleared
    assert "True label (what was performed): happy" in text("#emodemo-summary")

    # the History tab lists the correction
    next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
         if b.text.strip() == "History").click()
    wait.until(lambda _: "selenium" in text("#emodemo-history"))

    # and the row is in the database, verbatim
    from emodemo.store import CorrectionStore
    store = CorrectionStore(db)
    try:
        rows = store.corrections()
    finally:
        store.close()
    assert len(rows) == 1
    r = rows[0]
    assert r.label == "sad" and r.annotator == "selenium"
    assert r.transcript_corrected == "I am so sad and tired <b>today</b>"
    assert r.transcript_shown and r.predicted_label and r.bundle_name
    assert r.prob_text is not None and r.start is None

    # the Models tab lists the shipped bundle as active, and the dry run reads the store
    next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
         if b.text.strip() == "Models").click()
    wait.until(lambda _: "● active" in text("#emodemo-models") and "default" in text("#emodemo-models"))
    assert "Active:" in text("#emodemo-models-msg")
    next(b for b in d.find_elements(By.CSS_SELECTOR, "button")
         if b.text.strip() == "Check the data (dry run)").click()
    wait.until(lambda _: "corrections: 1" in text("#emodemo-ft-msg"))
    assert "too few corrections" in text("#emodemo-ft-msg")


@pytest.fixture(scope="module")
def driver2(tmp_path_factory):
    """A second browser: a second annotator."""
    opts = Options()
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium2')}")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1400,1700"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


def _annotate_tab(d, name: str):
    wait = WebDriverWait(d, STEP_TIMEOUT)
    next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
         if b.text.strip() == "Annotate").click()
    box = wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#emodemo-ann-name input, "
                                                                 "#emodemo-ann-name textarea"))[0]
    box.send_keys(name)
    return wait


def _clip(d) -> str:
    try:
        return d.find_element(By.CSS_SELECTOR, "#emodemo-ann-clip").text
    except Exception:  # noqa: BLE001 - re-rendered while reading
        return ""


def _shown(d, before: str, wait) -> str:
    wait.until(lambda _: _clip(d) != before and ("Clip " in _clip(d) or "Nothing left" in _clip(d)))
    return _clip(d).split(",")[0]


@pytest.mark.slow
def test_two_annotators_never_get_the_same_clip_before_it_needs_a_second_vote(server, driver, driver2):
    """Two browsers, two annotators, keyboard only after the first click: the clips leased at
    the same time differ; a clip comes back to the other annotator only once it has one vote."""
    url, db = server
    a, b = driver, driver2
    for d in (a, b):
        d.get(url)
        WebDriverWait(d, STEP_TIMEOUT).until(
            lambda _: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
    wa, wb = _annotate_tab(a, "ana"), _annotate_tab(b, "bob")
    # the queue is empty: the tab says so and opens "Add audio to the queue" by itself
    wa.until(lambda _: "The queue is empty" in a.find_element(By.ID, "emodemo-ann-progress").text)
    wa.until(lambda _: a.find_element(By.ID, "emodemo-ann-files").is_displayed())
    files = [str(CLIP.parent / n) for n in ("angry_actor17.flac", "sad_actor19.flac",
                                            "neutral_actor20.flac")]
    wa.until(lambda _: a.find_elements(By.CSS_SELECTOR, "#emodemo-ann-files input[type=file]"))
    a.find_element(By.CSS_SELECTOR, "#emodemo-ann-files input[type=file]").send_keys("\n".join(files))
    wa.until(lambda _: "neutral_actor20" in a.find_element(By.ID, "emodemo-ann-files").text)
    a.find_element(By.ID, "emodemo-ann-add").click()
    wa.until(lambda _: "3 clips added" in a.find_element(By.ID, "emodemo-ann-msg").text)

    a.find_element(By.ID, "emodemo-ann-next").click()
    first_a = _shown(a, "", wa)
    b.find_element(By.ID, "emodemo-ann-next").click()
    first_b = _shown(b, "", wb)
    assert first_a != first_b                        # leased: never the same clip at once
    voted = {"ana": [first_a], "bob": [first_b]}
    for _ in range(2):                               # keyboard: a label, then enter
        for d, w, who, key in ((a, wa, "ana", "4"), (b, wb, "bob", "3")):
            before = _clip(d)
            d.find_element(By.TAG_NAME, "body").send_keys(key)
            w.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#emodemo-ann-label input:checked"))
            d.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
            now = _shown(d, before, w)
            if "Nothing left" in now:
                continue
            assert now not in voted[who]             # never a clip this annotator labelled
            other = "bob" if who == "ana" else "ana"
            if now == _clip(b if d is a else a).split(",")[0]:
                pytest.fail(f"{who} got {now}, which {other} holds right now")
            voted[who].append(now)
    assert "votes per annotator" in a.find_element(By.ID, "emodemo-ann-progress").text
    before = _clip(a)
    if "Clip " in before:                            # s skips: another clip, or none left
        a.find_element(By.TAG_NAME, "body").send_keys("s")
        assert _shown(a, before, wa).split(",")[0] != before.split(",")[0]
    from emodemo.store import CorrectionStore
    store = CorrectionStore(db)
    try:
        rows = [r for r in store.corrections() if r.annotator in ("ana", "bob")]
    finally:
        store.close()
    assert {r.annotator for r in rows} == {"ana", "bob"} and len(rows) >= 4
    assert {r.label for r in rows if r.annotator == "ana"} == {"angry"}
    assert {r.label for r in rows if r.annotator == "bob"} == {"sad"}
