"""Models tab: list the bundles, switch the active one, check the data and fine-tune in the
background (services: emodemo.registry.ModelRegistry, emodemo.jobs.Finetuner)."""
from __future__ import annotations

from typing import Any, Optional

from ... import jobs
from ...analysis import clean_input_text, format_bytes
from .. import markdown as md
from .base import guard

MODEL_COLUMNS = ["", "folder", "name", "version", "created (UTC)", "size", "audio UA (val)",
                 "text macro-F1 (dev)", "fine-tuned from", "corrections used"]


def _metric(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


class ModelsHandlers:
    """Mixed into `Handlers`; uses registry and finetuner from it."""

    def reference_choices(self) -> list[tuple[str, str]]:
        """Reference sets offered for the fine-tuning gate: none, or the active bundle's own
        validation data when it is present on this machine (never a path typed by a visitor)."""
        from ...data import SHARED_DATA
        out = [("none (no reference check)", "")]
        rc = self.rec.config.run_config
        val = (rc.get("speech") or {}).get("val") or []
        for spec in ([val] if isinstance(val, str) else val):
            kind = spec.split(":", 1)[0]
            if kind == "ravdess" and ":root=" not in spec and (SHARED_DATA / kind).exists():
                out.append((spec, spec))
        return out

    @guard("models_msg")
    def models(self) -> dict:
        """The bundles in the models folders, the active one marked. models_dd: {"choices", "value"}."""
        bundles = self.registry.bundles()
        active = self.registry.active_path()
        rows = [["● active" if b.path == active else "", b.key, b.name, b.version,
                 b.created[:16].replace("T", " "), format_bytes(b.size), _metric(b.audio_ua),
                 _metric(b.text_f1), b.base or "–",
                 "–" if b.corrections is None else str(b.corrections)] for b in bundles]
        value = next((b.key for b in bundles if b.path == active), None)
        return {"models_table": rows,
                "models_dd": {"choices": [b.key for b in bundles], "value": value},
                "models_msg": md.models_listed(len(bundles), self.registry.folders, self.rec,
                                               active.name if active else None)}

    @guard("models_msg")
    def switch_model(self, key: Optional[str], token: Any = None) -> dict:
        """Make the bundle `key` (a folder name listed by `models`) the active model."""
        changed = self.registry.switch(key, token)
        out = self.models()
        if not changed:
            out["models_msg"] = md.ok(f"**{md.md_escape(key)}** is already the active model.")
            return out
        new = self.rec
        out["weight"] = float(new.fusion.audio_weight)
        out["models_msg"] = md.ok(f"Now using **{md.md_escape(new.name)} v{md.md_escape(new.version)}** "
                                  f"(`{md.md_escape(key)}`) for everyone using this app. New "
                                  "predictions and corrections record this version.")
        return out

    @guard("ft_msg")
    def finetune_dry_run(self, min_per_class: Any = None) -> dict:
        """What the store holds for fine-tuning: counts per class and annotator, agreement."""
        kw = self.finetuner.kwargs(None, min_per_class, "", False)
        base = self.registry.active_path() or self.registry.new_bundles_dir / "default"
        rep = self.finetuner.dry_run(base, self.work_dir / "dry-run", kw["min_per_class"])
        return {"ft_msg": md.dry_run(rep, jobs.summary_text(rep["dataset"]))}

    @guard("ft_msg")
    def start_finetune(self, name: Any, epochs: Any = None, min_per_class: Any = None,
                       reference: Any = None, force: Any = False, token: Any = None) -> dict:
        """Start fine-tuning a new bundle `<models folder>/<name>` from the active one in the
        background. ft_timer: whether the progress poller runs."""
        job, dry = self.finetuner.start(clean_input_text(name), epochs, min_per_class,
                                        reference, force, token)
        msg = (f"Fine-tuning **{md.md_escape(job.out.name)}** from **{md.md_escape(job.base.name)}** "
               f"on {dry['dataset']['clips']} corrected clips. You can keep using the app; the new "
               "model appears in the table when it is done.")
        return {"ft_msg": md.ok(msg), "ft_timer": True, "ft_progress": md.job(job)}

    def finetune_status(self) -> dict:
        """Progress of the current or last fine-tuning run (polled by a timer while it runs);
        when it has ended, the refreshed table too."""
        job = self.finetuner.job
        out = {"ft_progress": md.job(job), "ft_timer": bool(job is not None and job.running)}
        if job is not None and not job.running:
            out.update({k: v for k, v in self.models().items() if k != "models_msg"})
        return out
