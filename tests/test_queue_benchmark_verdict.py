"""scripts/queue_benchmark_verdict.py: the re-run's verdict follows the rule fixed before it ran."""
import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("queue_benchmark_verdict", ROOT / "scripts" / "queue_benchmark_verdict.py")
V = importlib.util.module_from_spec(spec)
spec.loader.exec_module(V)

SETTINGS = [("nemo", 50), ("nemo", 100), ("emotiontts-ko", 25), ("emotiontts-ko", 50), ("emovo", 50), ("emovo", 100)]


def _write(folder, scores: dict, drop: int = 0):
    """Row files of every run of the six settings: scores[how] is each run's UA (+ a seed's 0.01)."""
    n = 0
    for corpus, size in SETTINGS:
        for how, runs in V.RUNS_PER_SETTING.items():
            for seed in range(runs):
                d = folder / f"{corpus}-n{size}-{how}{seed}"
                d.mkdir(parents=True)
                ua = scores[how] + 0.01 * (seed % 3)
                (d / "row.json").write_text(json.dumps({"corpus": corpus, "n": size, "how": how, "seed": seed,
                                                       "unseen_UA_before": 0.4, "exit": 3 if seed == 1 else 0,
                                                       "unseen_UA": ua}))
                n += 1
    for p in sorted(folder.glob("*/row.json"))[:drop]:
        p.unlink()
    return n


def test_the_rule(tmp_path, capsys):
    assert _write(tmp_path / "a", {"queue": 0.60, "queue-spread": 0.50, "random": 0.55}) == 126
    assert V.main([str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "coverage (the default) beats random" in out and "126 runs" in out
    assert "| nemo | 50 | 0.400 | 0.600 (1 runs, 0 r) | 0.509 ± 0.009 (10 runs, 1 r) |" in out
    _write(tmp_path / "b", {"queue": 0.50, "queue-spread": 0.58, "random": 0.55})
    V.main([str(tmp_path / "b")])
    assert "spread becomes the default" in capsys.readouterr().out
    _write(tmp_path / "c", {"queue": 0.50, "queue-spread": 0.52, "random": 0.55})
    V.main([str(tmp_path / "c")])
    assert "nothing changes" in capsys.readouterr().out
    _write(tmp_path / "d", {"queue": 0.60, "queue-spread": 0.60, "random": 0.50}, drop=1)   # one missing
    V.main([str(tmp_path / "d")])
    assert "incomplete: no verdict" in capsys.readouterr().out
    assert V.main([str(tmp_path / "empty")]) == 2
    lines = [p.read_text() for p in sorted((tmp_path / "a").glob("*/row.json"))]      # as JSON lines
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    V.main([str(tmp_path / "rows.jsonl")])
    assert "coverage (the default) beats random" in capsys.readouterr().out
