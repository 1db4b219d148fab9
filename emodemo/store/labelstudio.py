"""Label Studio's JSON format for audio classification: export the corrections, import them back.

Export: one task per clip (`emodemo.labels.clip_key`), one annotation per correction::

    {"id": 1,
     "data": {"audio": "/data/local-files/?d=media/ab/ab12....wav", "media_sha256": "ab12...",
              "start": null, "end": null, "transcript": "what the model heard",
              "speaker": "ana"},
     "annotations": [{"id": 7, "completed_by": {"email": "ana@account.emodemo.invalid", ...},
                      "result": [{"from_name": "emotion", "to_name": "audio", "type": "choices",
                                  "value": {"choices": ["happy"]}, ...},
                                 {"from_name": "transcript", "to_name": "audio",
                                  "type": "textarea", "value": {"text": ["corrected text"]}, ...}],
                      "was_cancelled": false, "ground_truth": false, "created_at": ..., ...,
                      "emodemo": {...}}],
     "predictions": [{"model_version": "default 4", "result": [...choices...]}]}

A task's ``data.speaker`` is who speaks in the clip (or the session): the newest one its
corrections name; each annotation keeps its own in its ``emodemo`` fields.

`label_config` gives the project's labeling config with the same names. Audio is referenced
through Label Studio's local-files URL, relative to a document root (by default the folder that
holds the media folder): start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``
and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<that folder>``, add a local storage for it, or
pass another `audio_url` prefix. Label Studio matches annotators by e-mail: emodemo's accounts and
names become addresses under ``emodemo.invalid`` (create members with them, or set
``ALLOW_IMPORT_TASKS_WITH_UNKNOWN_EMAILS=true`` to file them under the importing user).

Import reads that format as Label Studio exports it (``choices`` results for a task, ``labels``
results with start/end for segments, a ``textarea`` result as the transcript); identity comes
from ``completed_by`` (an ``emodemo.invalid`` address back to its account or name, another
e-mail or a Label Studio user id as a signed-in account), the speaker from the annotation's
``emodemo`` fields, else the task's ``data.speaker`` (text, or a number as its digits).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from ..errors import EmodemoError
from ..labels import NONE_LABEL, clip_key
from .media import atomic_open
from .records import ImportResult, StoreError
from .writes import WritableStore


FROM_NAME, TEXT_NAME, TO_NAME = "emotion", "transcript", "audio"
LOCAL_FILES = "/data/local-files/?d="
ACCOUNT_DOMAIN, NAME_DOMAIN = "account.emodemo.invalid", "name.emodemo.invalid"


def label_config(labels: Iterable[str]) -> str:
    """A Label Studio labeling config matching the export: audio, one emotion choice (plus
    "none" = none of these), an editable transcript."""
    choices = "".join(f"\n    <Choice value={quoteattr(str(l))}/>" for l in [*labels, NONE_LABEL])
    return (f'<View>\n  <Audio name="{TO_NAME}" value="${TO_NAME}"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" '
            f'showInline="true">{choices}\n  </Choices>\n'
            f'  <TextArea name="{TEXT_NAME}" toName="{TO_NAME}" rows="2" editable="true" '
            f'maxSubmissions="1"/>\n</View>\n')


# ---- export ----------------------------------------------------------------------------------
def _completed_by(rec: Any) -> Optional[dict]:
    account, name = rec.get("annotator_account"), rec.annotator
    if account:
        email = f"{quote(account, safe='')}@{ACCOUNT_DOMAIN}"
    elif name:
        email = f"{quote(name, safe='')}@{NAME_DOMAIN}"
    else:
        return None  # anonymous: Label Studio files it under the importing user
    return {"email": email, "first_name": name or "", "last_name": "", "username": account or ""}


def _annotation(rec: Any, task_id: int) -> dict:
    result = [{"id": f"c{rec.id}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
               "origin": "manual", "value": {"choices": [rec.label]}}]
    if rec.transcript_corrected is not None:
        result.append({"id": f"t{rec.id}", "from_name": TEXT_NAME, "to_name": TO_NAME,
                       "type": "textarea", "origin": "manual",
                       "value": {"text": [rec.transcript_corrected]}})
    ann = {"id": rec.id, "result": result, "was_cancelled": False, "ground_truth": False,
           "created_at": rec.created_at.isoformat(),
           "updated_at": (rec.updated_at or rec.created_at).isoformat(), "lead_time": None,
           "task": task_id,
           # emodemo's own fields (Label Studio ignores them): a round trip keeps them
           "emodemo": {"note": rec.note, "transcript_shown": rec.transcript_shown,
                       "predicted_label": rec.predicted_label, "prob_audio": rec.prob_audio,
                       "prob_text": rec.prob_text, "prob_fused": rec.prob_fused,
                       "bundle_name": rec.bundle_name, "bundle_version": rec.bundle_version,
                       "start": rec.start, "end": rec.end, "file_name": rec.file_name,
                       "language": rec.language,
                       "language_probability": rec.language_probability,
                       "translation": rec.translation, "speaker": rec.speaker}}
    who = _completed_by(rec)
    if who is not None:
        ann["completed_by"] = who
    return ann


def _prediction(rec: Any) -> Optional[dict]:
    if not rec.predicted_label:
        return None
    score = (rec.prob_fused or {}).get(rec.predicted_label) if isinstance(rec.prob_fused, dict) \
        else None
    version = " ".join(str(v) for v in (rec.bundle_name, rec.bundle_version) if v) or "emodemo"
    return {"model_version": version, "score": score,
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": [rec.predicted_label]}}]}


def export_labelstudio(store: WritableStore, path: Union[str, os.PathLike],
                       audio_url: Optional[str] = None) -> int:
    """Write the corrections as Label Studio tasks (JSON list) to `path`; returns the number of
    tasks (clips). `audio_url`: prefix for the audio references (default: the local-files URL of
    the media folder's parent); the rest of each reference is the stored file's path below it."""
    root = store.media_dir.parent
    prefix = LOCAL_FILES if audio_url is None else audio_url
    tasks: dict[tuple, dict] = {}
    for rec in sorted(store.iter_records(), key=lambda r: r.id):  # oldest first
        key = clip_key(rec.media_sha256, rec.start, rec.end, rec.duration)
        task = tasks.get(key)
        if task is None:
            rel = Path(rec.media_path).relative_to(root).as_posix()
            task = tasks[key] = {
                "id": len(tasks) + 1,
                "data": {TO_NAME: prefix + (quote(rel) if audio_url is None else rel),
                         "media_sha256": key[0], "start": key[1], "end": key[2],
                         "duration": rec.duration, "transcript": rec.transcript_shown,
                         "speaker": None},
                "annotations": [], "predictions": []}
        task["annotations"].append(_annotation(rec, task["id"]))
        if rec.transcript_shown:
            task["data"]["transcript"] = rec.transcript_shown
        if rec.speaker:                   # the clip's speaker: the newest one named
            task["data"]["speaker"] = rec.speaker
        pred = _prediction(rec)
        if pred is not None:
            task["predictions"] = [pred]  # the newest prediction for the clip
    with atomic_open(Path(path), "w", encoding="utf-8") as f:
        json.dump(list(tasks.values()), f, ensure_ascii=False, indent=1)
    return len(tasks)


# ---- import ----------------------------------------------------------------------------------
def is_labelstudio_json(path: Union[str, os.PathLike]) -> bool:
    """True for a .json file, or a file whose first non-blank character opens a JSON list."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return head.startswith(b"[")


def _identity(ann: dict) -> tuple[Optional[str], Optional[str]]:
    """(annotator name, account) of a Label Studio annotation."""
    who = ann.get("completed_by")
    if isinstance(who, dict):
        email = str(who.get("email") or "")
        local, _, domain = email.rpartition("@")
        name = " ".join(str(who.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
        if domain == ACCOUNT_DOMAIN:
            return name or None, unquote(local)
        if domain == NAME_DOMAIN:
            return unquote(local), None
        return name or email or None, email or None
    if isinstance(who, int) and not isinstance(who, bool):
        # newer exports: a user id, with "created_username" = " email, id"
        email = str(ann.get("created_username") or "").split(",")[0].strip()
        return email or f"labelstudio user {who}", email or f"labelstudio:{who}"
    return None, None


def _audio_path(task: dict, audio_root: Path, store: WritableStore) -> Path:
    data = task.get("data") or {}
    ref = data.get(TO_NAME)
    if not isinstance(ref, str) or not ref.strip():
        raise StoreError(f"the task has no data.{TO_NAME}")
    parts = urlsplit(ref.strip())
    if parts.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        raise StoreError(f"cannot fetch {parts.scheme} audio ({ref}); download it and use a path")
    if parts.path.startswith("/data/"):         # local files, or files uploaded to Label Studio
        rel = parse_qs(parts.query).get("d", [""])[0] if parts.path.rstrip("/") == \
            "/data/local-files" else unquote(parts.path[len("/data/"):])
        path = (audio_root / rel).resolve()
        if not path.is_relative_to(audio_root.resolve()):
            raise StoreError(f"{ref} points outside the audio root {audio_root}")
    else:
        path = Path(unquote(parts.path)).expanduser()
        path = path if path.is_absolute() else audio_root / path
    if not path.is_file() and isinstance(data.get("media_sha256"), str):
        try:
            return store.media_path(data["media_sha256"])  # the audio is in this store already
        except StoreError:
            pass
    return path


def _results(ann: dict, task: dict) -> list[dict]:
    """[{label, start, end, transcript}] of one annotation (a "labels" region is a segment)."""
    data = task.get("data") or {}
    text = None
    out = []
    for r in ann.get("result") or []:
        value = r.get("value") or {}
        kind = r.get("type")
        if kind == "textarea" and value.get("text"):
            text = "\n".join(str(t) for t in value["text"])
        elif kind == "choices" and value.get("choices"):
            out.append({"label": value["choices"][0], "start": data.get("start"),
                        "end": data.get("end")})
        elif kind == "labels" and value.get("labels"):
            out.append({"label": value["labels"][0], "start": value.get("start"),
                        "end": value.get("end")})
    for item in out:
        item["transcript"] = text
    return out


def _speaker(extra: dict, data: dict) -> Any:
    """Who speaks: the annotation's own (an emodemo export), else the task's ``data.speaker``
    (a number, e.g. a speaker id column, as its digits); `store.add` cleans it."""
    who = extra["speaker"] if "speaker" in extra else data.get("speaker")
    return str(who) if isinstance(who, int) and not isinstance(who, bool) else who


def _corrections_of(ann: dict, task: dict, annotator: Optional[str]) -> list[dict]:
    """The `store.add` keyword arguments (all but the audio) of one annotation's results."""
    name, account = _identity(ann)
    extra = ann.get("emodemo") if isinstance(ann.get("emodemo"), dict) else {}
    pred = None
    if extra.get("predicted_label") or extra.get("prob_fused"):
        pred = {"label": extra.get("predicted_label"), "audio": extra.get("prob_audio"),
                "text": extra.get("prob_text"), "fused": extra.get("prob_fused"),
                "transcript": extra.get("transcript_shown"),
                "bundle_name": extra.get("bundle_name"),
                "bundle_version": extra.get("bundle_version")}
    lang = extra.get("language")
    common = dict(annotator=name or annotator, account=account, note=extra.get("note"),
                  prediction=pred, translation=extra.get("translation"),
                  language=None if not lang else {
                      "code": lang, "probability": extra.get("language_probability")},
                  speaker=_speaker(extra, task.get("data") or {}))
    if extra.get("file_name"):
        common["file_name"] = extra["file_name"]
    return [dict(common, label=item["label"], transcript=item["transcript"],
                 start=extra.get("start", item["start"]) if extra else item["start"],
                 end=extra.get("end", item["end"]) if extra else item["end"])
            for item in _results(ann, task)]


def import_labelstudio(store: WritableStore, path: Union[str, os.PathLike],
                       audio_root: Union[str, os.PathLike, None] = None,
                       annotator: Optional[str] = None) -> ImportResult:
    """Add the annotations of a Label Studio JSON export (a list of tasks) as corrections.

    audio_root: where the tasks' audio references point into (Label Studio's local-files
        document root, or the folder holding its uploads); default: the JSON file's folder.
    annotator: the name for annotations without ``completed_by``.
    Each task's annotations are added oldest first (by updated_at), so each annotator's latest
    one stays their vote. Bad tasks are skipped and reported ("task 3: ...")."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StoreError(f"{path.name} is not JSON: {exc}") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise StoreError(f"{path.name} is not a Label Studio export (a JSON list of tasks)")
    root = Path(audio_root).expanduser() if audio_root is not None else path.resolve().parent
    imported, errors = 0, []
    for i, task in enumerate(tasks, 1):
        tid = task.get("id", i) if isinstance(task, dict) else i
        try:
            if not isinstance(task, dict):
                raise StoreError("not a task object")
            anns = [a for a in task.get("annotations") or task.get("completions") or []
                    if isinstance(a, dict) and not a.get("was_cancelled")]
            if not anns:
                continue
            audio = _audio_path(task, root, store)
            anns.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                     str(a.get("id"))))
            for ann in anns:
                for correction in _corrections_of(ann, task, annotator):
                    store.add(audio, **correction)
                    imported += 1
        except (EmodemoError, OSError) as exc:
            errors.append(f"task {tid}: {exc}")
    return ImportResult(imported, errors)
