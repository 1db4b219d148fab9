"""Plotly figures for the demo: class probabilities, waveform with analysed spans, emotion timeline.

Every function takes plain Python/numpy data and returns a `plotly.graph_objects.Figure`, so the
figures can be built and inspected without Gradio. Text that came from people or from ASR
(transcripts) is HTML-escaped before it goes into hover labels.
"""
from __future__ import annotations

import html
from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

# One colour per emotion, stable across figures (colour-blind friendly-ish, Okabe–Ito based).
EMOTION_COLORS = {
    "neutral": "#8c8c8c",
    "happy": "#E69F00",
    "sad": "#0072B2",
    "angry": "#D55E00",
    "fearful": "#CC79A7",
    "disgust": "#009E73",
    "surprised": "#F0E442",
    "calm": "#56B4E9",
    "none": "#444444",
}
_FALLBACK = ["#56B4E9", "#999933", "#882255", "#44AA99", "#AA4499", "#117733", "#332288"]
BRANCH_COLORS = {"audio": "#4C78A8", "text": "#72B7B2", "fused": "#F58518"}
WAVE_POINTS = 2000          # columns of the min/max envelope drawn for the waveform
_MARGIN = dict(l=50, r=20, t=40, b=40)
# legends sit under the plot, left: the top right corner is Plotly's toolbar
_LEGEND = dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0)
_MARGIN_LEGEND = dict(l=50, r=20, t=40, b=80)
UNSURE_PATTERN = "/"        # hatching of the segments the model is unsure about


def label_color(label: str, labels: Sequence[str] = ()) -> str:
    """The colour of an emotion label (known ones fixed, others from a fallback palette)."""
    if label in EMOTION_COLORS:
        return EMOTION_COLORS[label]
    i = list(labels).index(label) if label in labels else abs(hash(label))
    return _FALLBACK[i % len(_FALLBACK)]


def _vals(labels: Sequence[str], probs: Optional[Mapping[str, float]]) -> list[float]:
    return [float(probs.get(k, 0.0)) for k in labels] if probs is not None else []


def probabilities_figure(labels: Sequence[str], audio: Mapping[str, float],
                         text: Optional[Mapping[str, float]], fused: Mapping[str, float],
                         title: str = "Class probabilities") -> go.Figure:
    """Grouped bars: audio, text (when there is a transcript) and fused probability per class."""
    labels = list(labels)
    fig = go.Figure()
    branches = [("audio", "audio branch", audio), ("text", "text branch", text),
                ("fused", "fused", fused)]
    for key, name, probs in branches:
        if probs is None:
            continue
        vals = _vals(labels, probs)
        fig.add_trace(go.Bar(
            name=name, x=labels, y=vals, marker_color=BRANCH_COLORS[key],
            text=[f"{v:.0%}" for v in vals], textposition="outside", cliponaxis=False,
            hovertemplate="%{x}: %{y:.1%}<extra>" + name + "</extra>"))
    if text is None:
        fig.add_annotation(text="no transcript: text branch not used", showarrow=False,
                           xref="paper", yref="paper", x=1, y=1.12, xanchor="right",
                           font=dict(size=11, color="#777"))
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=14)),
        barmode="group", bargap=0.25, bargroupgap=0.05, height=340, margin=_MARGIN_LEGEND,
        yaxis=dict(range=[0, 1.1], tickformat=".0%", title=None), legend=_LEGEND,
        template="plotly_white", uniformtext=dict(minsize=8, mode="hide"))
    return fig


def envelope(wav: np.ndarray, sample_rate: int = 16000, points: int = WAVE_POINTS
             ) -> dict[str, list[float]]:
    """Min/max envelope of a waveform in at most `points` columns: {"t", "lo", "hi"} (seconds,
    amplitude). Small enough to keep in a Gradio State and to redraw quickly."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    n = wav.size
    if n == 0:
        return {"t": [], "lo": [], "hi": []}
    cols = max(1, min(points, n))
    step = int(np.ceil(n / cols))
    pad = step * cols - n
    x = np.pad(wav, (0, pad), mode="edge") if pad else wav
    x = x[: step * cols].reshape(cols, step)
    t = (np.arange(cols) * step + step / 2) / sample_rate
    t = np.minimum(t, n / sample_rate)
    return {"t": np.round(t, 4).tolist(), "lo": np.round(x.min(1), 4).tolist(),
            "hi": np.round(x.max(1), 4).tolist()}


def waveform_figure(env: Mapping[str, Sequence[float]], duration: float,
                    spans: Sequence[Mapping] = (), selected: Optional[int] = None,
                    labels: Sequence[str] = (), title: str = "Waveform") -> go.Figure:
    """The waveform envelope with each analysed span shaded in its predicted label's colour;
    the selected span is shaded darker and outlined. `spans`: dicts with start, end, label."""
    fig = go.Figure()
    t, lo, hi = list(env.get("t", [])), list(env.get("lo", [])), list(env.get("hi", []))
    fig.add_trace(go.Scatter(x=t, y=hi, mode="lines", line=dict(width=0.6, color="#3b4a6b"),
                             name="max", hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=t, y=lo, mode="lines", line=dict(width=0.6, color="#3b4a6b"),
                             fill="tonexty", fillcolor="rgba(59,74,107,0.55)", name="waveform",
                             hoverinfo="skip", showlegend=False))
    for i, sp in enumerate(spans):
        sel = selected is not None and i == selected
        color = label_color(str(sp.get("label", "")), labels)
        fig.add_vrect(x0=float(sp["start"]), x1=float(sp["end"]), fillcolor=color,
                      opacity=0.35 if sel else 0.15, layer="below",
                      line=dict(width=2 if sel else 0, color=color))
    peak = max([abs(v) for v in lo + hi] + [0.05])
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=14)),
        height=200, margin=_MARGIN, template="plotly_white", showlegend=False,
        xaxis=dict(title="time (s)", range=[0, max(float(duration), 1e-3)]),
        yaxis=dict(range=[-peak * 1.05, peak * 1.05], showticklabels=False, zeroline=False))
    return fig


def _hover(seg: Mapping, labels: Sequence[str], max_chars: int = 160) -> str:
    fused = seg.get("fused") or {}
    top = sorted(((float(fused.get(k, 0.0)), k) for k in labels), reverse=True)
    lines = [f"<b>{html.escape(str(seg.get('call') or seg.get('label', '')))}</b> "
             f"{float(seg['start']):.1f}–{float(seg['end']):.1f} s"]
    lines += [f"{html.escape(k)}: {p:.0%}" for p, k in top[:4]]
    tr = str(seg.get("transcript") or "")
    if len(tr) > max_chars:
        tr = tr[: max_chars - 1] + "…"
    lines.append("“" + html.escape(tr) + "”" if tr else "(no transcript)")
    return "<br>".join(lines)


def timeline_figure(segments: Sequence[Mapping], labels: Sequence[str],
                    selected: Optional[int] = None, title: str = "Emotion timeline") -> go.Figure:
    """One coloured band per segment (colour = fused label); hover shows the probabilities and
    the transcript. `segments`: dicts with start, end, label, fused ({label: p}), transcript,
    and optionally call (emodemo.analysis.call: "angry or fearful — unsure"): the segments whose
    call says unsure are hatched and named so."""
    labels = list(labels)
    fig = go.Figure()
    by_label: dict[str, list[int]] = {}
    for i, seg in enumerate(segments):
        by_label.setdefault(str(seg.get("label", "")), []).append(i)
    order = [l for l in labels if l in by_label] + [l for l in by_label if l not in labels]
    for lab in order:
        idx = by_label[lab]
        fig.add_trace(go.Bar(
            name=lab, orientation="h", y=["emotion"] * len(idx),
            base=[float(segments[i]["start"]) for i in idx],
            x=[max(float(segments[i]["end"]) - float(segments[i]["start"]), 1e-3) for i in idx],
            marker=dict(color=label_color(lab, labels),
                        pattern=dict(shape=[UNSURE_PATTERN if "unsure" in str(segments[i].get("call", ""))
                                            else "" for i in idx], fgcolor="#ffffff"),
                        line=dict(width=[3 if i == selected else 0.5 for i in idx],
                                  color=["#111" if i == selected else "#fff" for i in idx])),
            customdata=[i + 1 for i in idx],
            hovertext=[_hover(segments[i], labels) for i in idx],
            hovertemplate="#%{customdata} %{hovertext}<extra></extra>"))
    end = max([float(s["end"]) for s in segments] + [1e-3])
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=14)),
        barmode="overlay", height=230, margin=_MARGIN_LEGEND, template="plotly_white",
        xaxis=dict(title="time (s)", range=[0, end]), yaxis=dict(showticklabels=False),
        legend={**_LEGEND, "y": -0.45, "title": dict(text="hatched = unsure  ")},
        hoverlabel=dict(align="left"))
    return fig
