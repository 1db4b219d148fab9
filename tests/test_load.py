"""A short version of benchmarks/load_test.py: the app as shipped (queue settings included) on
localhost, 4 visitors at once through gradio_client, each predicting an example clip and storing
a correction. No timing asserts: no request fails and every correction is in the database."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

VISITORS = 4


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("emodemo_load_test",
                                                  ROOT / "benchmarks" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_visitors_at_once_all_served_and_stored(load_test, tmp_path):
    r = load_test.run_load_test(visitors=VISITORS, timeout=240, start_timeout=240, work=tmp_path)
    assert r["failures"] == [] and r["failed_visitors"] == 0, r["app_log_tail"]
    assert r["requests_ok"] == 2 * VISITORS
    assert r["corrections_stored"] == VISITORS and r["distinct_ids"] == VISITORS
    assert r["corrections_total"] == VISITORS + 1          # + the warm-up visitor's
    labels = set(json.loads((ROOT / "models" / "default" / "config.json").read_text())["labels"])
    assert all(v["label"] in labels for v in r["results"])
    assert r["warm_up"]["error"] is None
    assert "| `/predict` (with ASR) | 4 |" in load_test.report(r)
