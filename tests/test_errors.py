"""One exception hierarchy (emodemo.errors) and one error → exit-code table for the CLI."""
import json

import pytest

import emodemo
from emodemo import errors
from emodemo.cli import EXIT_CODES, exit_code, main
from emodemo.data import load_spec


def test_hierarchy_is_one_tree_of_value_errors():
    for cls in (errors.AudioError, errors.BundleError, errors.DataError, errors.StoreError,
                errors.FinetuneError, errors.TrainError):
        assert issubclass(cls, errors.EmodemoError) and issubclass(cls, ValueError)
    assert emodemo.AudioError is errors.AudioError and emodemo.EmodemoError is errors.EmodemoError
    assert exit_code(errors.AudioError("x")) == 1
    assert exit_code(errors.DataError("x")) == exit_code(errors.TrainError("x")) == 2
    assert exit_code(errors.EmodemoError("x")) == exit_code(errors.BundleError("x")) == 2
    assert set(EXIT_CODES) >= {errors.AudioError, errors.DataError, errors.StoreError,
                               errors.FinetuneError, errors.TrainError, errors.EmodemoError}


def test_user_fixable_fusion_problems_are_emodemo_errors():
    """Not a plain ValueError: the CLI turns these into one line instead of a traceback."""
    import numpy as np

    from emodemo.fusion import LateFusion, fit_fusion
    with pytest.raises(errors.BundleError, match="unknown fusion mode 'average'"):
        LateFusion.from_config({"mode": "average"})
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(errors.TrainError, match="unknown fusion objective 'loss'"):
        fit_fusion(p, p, np.array([0, 1, 2, 0]), objective="loss")


def test_data_errors_are_data_errors():
    with pytest.raises(errors.DataError, match="unknown data spec"):
        load_spec("no-such-corpus:dev")


def test_cli_maps_a_bad_recipe_to_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "speech": {"epoch": 3}}))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: unknown recipe key(s) speech.epoch")
    assert not (tmp_path / "run").exists()                 # refused before the run folder is made
    cfg.write_text(json.dumps({"text": {"lr": "fast"}}))
    assert main(["iemocap", str(tmp_path / "no-iemocap"), "--config", str(cfg)]) == 2
    assert "text.lr = 'fast'" in capsys.readouterr().err


def test_bad_settings_and_limits_are_settings_errors():
    """A bad EMODEMO_* number, file size or duration: a SettingsError (one `error:` line, exit
    2), not a plain ValueError. An unknown ranking passed by code stays a ValueError (the queue's
    options and the CLI check what a person types)."""
    from emodemo.analysis import Limits, parse_size
    from emodemo.annotate.rank import uncertainty
    from emodemo.settings import Settings, read_env
    with pytest.raises(errors.SettingsError, match="EMODEMO_ASR_THREADS='many' is not a number"):
        read_env("asr_threads", {"EMODEMO_ASR_THREADS": "many"})
    with pytest.raises(errors.SettingsError, match="EMODEMO_PORT"):
        Settings.from_env({"EMODEMO_PORT": "80x"})
    for bad in ("fifty", "0mb", -1):
        with pytest.raises(errors.SettingsError):
            parse_size(bad)
    with pytest.raises(errors.SettingsError, match="durations must be positive"):
        Limits.from_kwargs(max_duration=0)
    assert exit_code(errors.SettingsError("x")) == 2
    with pytest.raises(ValueError) as info:
        uncertainty({"a": 0.5, "b": 0.5}, "guess")
    assert not isinstance(info.value, errors.EmodemoError)
