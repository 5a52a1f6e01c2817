"""The HTML report and the figure functions it uses, on fake run directories built from synthetic data."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from lab import embedding, figures, report

LEVELS = ["digit", "parity"]
DIGIT_NAMES = ["zero", "one", "two"]
PARITY_NAMES = ["even", "odd"]


def _blobs(n_per: int = 20, seed: int = 0):
    """Three well-separated gaussian blobs in 16-D, labelled 0, 1, 2."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16) * 10.0
    feats = np.concatenate([c + rng.normal(scale=0.3, size=(n_per, 16)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), n_per)
    return feats, labels


def _metrics_lines(method: str):
    """A metrics log with an event, a criterion switching on at step 20, one kNN line."""
    lines = []
    for i, step in enumerate([5, 10, 15, 20, 25, 30]):
        per = {"instance": round(4.0 - 0.3 * i, 4)}
        if method == "rcl" and step >= 20:
            per["proto-4"] = round(2.0 - 0.2 * i, 4)
        rec = {"step": step, "epoch": step / 10, "loss": round(sum(per.values()), 4),
               "loss_per_criterion": per, "lr": 1e-3, "wall_seconds": step * 0.1}
        if step == 30:
            rec["knn_top1"] = 0.8 if method == "rcl" else 0.7
        lines.append(json.dumps(rec))
        if step == 15:
            lines.append(json.dumps({"event": "resume", "step": 15}))
    return lines


def make_run(root: Path, name: str, method: str = "rcl", with_summary: bool = True,
             with_eval: bool = True, seed: int = 0) -> tuple[Path, dict]:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "method": method, "dataset": "blobs", "epochs": 3, "criteria": [], "temperature": 0.2,
        "batch_size": 16, "seed": seed}))
    # the last line is a record cut off mid-write, as a killed run leaves it
    (run / "metrics.jsonl").write_text("\n".join(_metrics_lines(method)) + '\n{"step": 35, "epo')
    feats, digit = _blobs(seed=seed)
    parity = digit % 2
    facts = {"features": feats, "digit": digit}
    if with_eval:
        if method == "rcl":
            rng = np.random.default_rng(seed + 1)
            fine = digit * 2 + rng.integers(0, 2, size=digit.shape)  # 6 fine clusters, 2 per digit
            coarse = np.where(fine // 2 == 2, 0, 1)                   # digits 0 and 1 merged; nested
            crit_names, crit_labels = np.array(["proto-6", "proto-2"]), np.stack([fine, coarse])
        else:
            crit_names, crit_labels = np.array([], dtype="<U1"), np.zeros((0, len(digit)), dtype=np.int64)
        np.savez(run / "eval.npz", test_features=feats, test_levels=np.stack([digit, parity]).astype(np.int64),
                 level_names=np.array(LEVELS), criteria_names=crit_names,
                 criteria_test_labels=crit_labels.astype(np.int64))
        facts["criteria_labels"] = crit_labels
    if with_summary:
        summary = {"method": method, "dataset": "blobs", "epochs": 3, "steps": 30,
                   "criteria": ["instance", "proto-6", "proto-2"] if method == "rcl" else ["instance"],
                   "knn_top1": 0.91234 if method == "rcl" else 0.85678, "linear_top1": 0.93456,
                   "knn_top1_per_level": {"digit": 0.91234, "parity": 0.95111},
                   "nmi": {"digit": 0.71717, "parity": 0.42424}, "ari": {"digit": 0.5, "parity": 0.3},
                   "criteria_nmi": {}, "criteria_ari": {}, "wall_seconds": 12.5,
                   "level_names": LEVELS, "class_names": {"digit": DIGIT_NAMES, "parity": PARITY_NAMES},
                   "device": "cpu"}
        if method == "rcl":
            summary.update(learned_nmi={"digit": 0.81818, "parity": 0.61616},
                           learned_nmi_source={"digit": "proto-6", "parity": "proto-2"})
        (run / "summary.json").write_text(json.dumps(summary))
        facts["summary"] = summary
    return run, facts


@pytest.fixture()
def runs(tmp_path):
    rcl, rcl_facts = make_run(tmp_path, "rcl-run", "rcl")
    moco, moco_facts = make_run(tmp_path, "moco-run", "moco", seed=1)
    return {"rcl": (rcl, rcl_facts), "moco": (moco, moco_facts)}


# ------------------------------------------------------------------------------------------ load_run

def test_load_run_skips_partial_line_and_keeps_events(runs):
    run = report.load_run(runs["rcl"][0])
    assert run.name == "rcl-run" and run.method == "rcl"
    assert [r["step"] for r in run.metrics if "event" not in r] == [5, 10, 15, 20, 25, 30]
    assert sum("event" in r for r in run.metrics) == 1
    assert any("partial last line" in n for n in run.notes)
    assert run.eval["test_features"].shape == (60, 16)
    assert run.summary["knn_top1"] == pytest.approx(0.91234)


def test_load_run_names_missing_files(tmp_path):
    run, _ = make_run(tmp_path, "cut", with_summary=False, with_eval=False)
    loaded = report.load_run(run)
    assert loaded.summary is None and loaded.eval is None
    with pytest.raises(FileNotFoundError, match="summary.json"):
        report.load_run(run, require_summary=True)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.load_run(run)
    with pytest.raises(FileNotFoundError, match="not found"):
        report.load_run(tmp_path / "nope")


# ---------------------------------------------------------------------------------------- loss_curves

def test_loss_curves_one_trace_per_run_and_series_with_logged_values(runs):
    metrics = {name: report.load_run(path).metrics for name, (path, _) in runs.items()}
    fig = figures.loss_curves(metrics)
    assert isinstance(fig, go.Figure)
    series = {(t.meta["run"], t.meta["series"]): t for t in fig.data}
    assert set(series) == {("rcl", "total"), ("rcl", "instance"), ("rcl", "proto-4"), ("rcl", "knn_top1"),
                           ("moco", "total"), ("moco", "instance"), ("moco", "knn_top1")}
    for name, recs in metrics.items():
        train = [r for r in recs if "event" not in r]
        assert list(series[(name, "total")].y) == [r["loss"] for r in train]
        assert list(series[(name, "total")].x) == [r["step"] for r in train]
        assert list(series[(name, "total")].customdata) == [r["epoch"] for r in train]
        assert list(series[(name, "instance")].y) == [r["loss_per_criterion"]["instance"] for r in train]
        assert list(series[(name, "knn_top1")].y) == [r["knn_top1"] for r in train if "knn_top1" in r]
    # the criterion that switched on at step 20 starts there: no invented zeros before it
    proto = series[("rcl", "proto-4")]
    assert list(proto.x) == [20, 25, 30]
    assert list(proto.y) == [metrics["rcl"][i]["loss_per_criterion"]["proto-4"] for i in (4, 5, 6)]
    # one run, one hue: total and its criteria share a legend group; runs differ in colour
    assert series[("rcl", "total")].line.color != series[("moco", "total")].line.color
    assert series[("rcl", "proto-4")].line.dash != "solid"
    # the resume event is marked
    assert any(s.x0 == 15 for s in fig.layout.shapes)


def test_loss_curves_keeps_the_last_record_of_a_relogged_step():
    recs = [{"step": 5, "epoch": 0.5, "loss": 3.0}, {"step": 10, "epoch": 1.0, "loss": 2.9},
            {"event": "resume", "step": 5}, {"step": 10, "epoch": 1.0, "loss": 2.5}]
    fig = figures.loss_curves({"r": recs})
    assert list(fig.data[0].x) == [5, 10] and list(fig.data[0].y) == [3.0, 2.5]
    empty = figures.loss_curves({"r": []})
    assert len(empty.data) == 0 and "no training steps" in empty.layout.annotations[0].text


# -------------------------------------------------------------------------------------- results_table

def test_results_table_shows_summary_values(runs):
    summaries = {name: facts["summary"] for name, (_, facts) in runs.items()}
    summaries["interrupted"] = {"method": "rcl", "dataset": "blobs"}
    fig = figures.results_table(summaries)
    table = fig.data[0]
    header = [re.sub("<.*?>", "", h) for h in table.header.values]
    cols = {h: list(c) for h, c in zip(header, table.cells.values)}
    assert cols["run"] == ["rcl", "moco", "interrupted"]
    assert cols["method"] == ["rcl", "moco", "rcl"]
    assert cols["kNN top-1"] == ["0.912", "0.857", "–"]
    assert cols["linear top-1"] == ["0.935", "0.935", "–"]
    assert cols["kNN · parity"][:2] == ["0.951", "0.951"]
    assert cols["NMI k-means · digit"][:2] == ["0.717", "0.717"]
    assert cols["NMI k-means · parity"][:2] == ["0.424", "0.424"]
    assert cols["NMI learned · digit"] == ["0.818", "–", "–"]
    assert cols["NMI learned · parity"] == ["0.616", "–", "–"]
    assert cols["learned by"] == ["digit: proto-6; parity: proto-2", "–", "–"]
    assert cols["wall s"] == ["12.500", "12.500", "–"]
    assert cols["steps"] == ["30", "30", "–"]


# ---------------------------------------------------------------------------------- embedding & scatter

def test_umap_embedding_shape_determinism_and_tiny_inputs():
    feats, _ = _blobs(n_per=10)
    emb = embedding.umap_embedding(feats, random_state=0)
    assert emb.method == "umap" and emb.coords.shape == (30, 2) and np.isfinite(emb.coords).all()
    np.testing.assert_allclose(embedding.umap_embedding(feats, random_state=0).coords, emb.coords)
    for n in (0, 1, 2, 3, 4):
        coords, method = embedding.umap_embedding(feats[:n])
        assert coords.shape == (n, 2) and np.isfinite(coords).all()
        assert method in {"pca", "trivial"}
    assert embedding.umap_embedding(np.ones((3, 4))).method == "trivial"


def test_umap_embedding_rejects_bad_features():
    with pytest.raises(ValueError, match="features.*2-D"):
        embedding.umap_embedding(np.zeros(5))
    bad = np.zeros((6, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="features must be finite"):
        embedding.umap_embedding(bad)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="features must be finite"):
        embedding.umap_embedding(bad)


def test_embedding_scatter_one_trace_per_class_with_names():
    coords = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.repeat([0, 1, 2], 10)
    fig = figures.embedding_scatter(coords, labels, DIGIT_NAMES, title="t")
    assert [t.name for t in fig.data] == DIGIT_NAMES
    np.testing.assert_allclose(fig.data[1].x, coords[10:20, 0])
    assert len({t.marker.color for t in fig.data}) == 3
    # class colours depend on the label, not on which classes happen to be present
    only_two = figures.embedding_scatter(coords[10:], labels[10:], DIGIT_NAMES)
    assert only_two.data[0].marker.color == fig.data[1].marker.color
    with pytest.raises(ValueError, match="labels"):
        figures.embedding_scatter(coords, labels[:5])


# ----------------------------------------------------------------------------------- learned_hierarchy

def test_learned_hierarchy_counts_match_an_independent_count(runs):
    facts = runs["rcl"][1]
    crit, digit = facts["criteria_labels"], facts["digit"]
    fig = figures.learned_hierarchy(crit, ["proto-6", "proto-2"], digit, DIGIT_NAMES)
    heat = next(t for t in fig.data if isinstance(t, go.Heatmap))
    expected = np.zeros((crit[-1].max() + 1, digit.max() + 1), dtype=np.int64)
    np.add.at(expected, (crit[-1], digit), 1)
    rows = heat.meta["cluster_ids"]
    np.testing.assert_array_equal(np.asarray(heat.customdata), expected[rows][:, heat.meta["class_ids"]])
    np.testing.assert_allclose(np.asarray(heat.z).sum(axis=1), 1.0)
    # the merged coarse cluster is labelled with the two digits it holds
    ticks = list(fig.layout.yaxis.ticktext)
    merged = ticks[rows.index(1)]
    assert "zero" in merged and "one" in merged and "two" not in merged
    sun = next(t for t in fig.data if isinstance(t, go.Sunburst))
    values = dict(zip(sun.ids, sun.values))
    assert values["1"] == int((crit[-1] == 1).sum())
    for fine in np.unique(crit[0]):
        coarse = crit[1][crit[0] == fine][0]
        assert values[f"{coarse}/{fine}"] == int(np.bincount(crit[0])[fine])


def test_learned_hierarchy_without_criteria_is_a_note():
    fig = figures.learned_hierarchy(np.zeros((0, 10), dtype=np.int64), [], np.arange(10) % 3)
    assert "No learned criteria" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="criteria_names"):
        figures.learned_hierarchy(np.zeros((2, 10), dtype=np.int64), ["a"], np.arange(10))


def test_learned_hierarchy_puts_unsure_samples_last():
    fig = figures.learned_hierarchy(np.array([[-1, 0, 1, 1]]), ["kmeans-2"], np.array([0, 0, 1, 1]), ["a", "b"])
    assert list(fig.layout.yaxis.ticktext) == ["#0 → a (100%)", "#1 → b (100%)", "unsure → a (100%)"]


# ------------------------------------------------------------------------------------------ write_report

def test_write_report_is_one_offline_file(runs, tmp_path):
    cut, _ = make_run(tmp_path, "cut", with_summary=False, with_eval=False)
    out = report.write_report({"RCL": runs["rcl"][0], "MoCo": runs["moco"][0], "cut": cut},
                              tmp_path / "out" / "report.html", title="Test report")
    assert out == tmp_path / "out" / "report.html" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind
    page = out.read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined exactly once
    assert not re.search(r"<script[^>]*\bsrc=", page), "the page must not load scripts from anywhere"
    assert "<h1>Test report</h1>" in page and "Relative Contrastive Loss" in page
    div_ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)
    assert div_ids == ["fig-results", "fig-loss", "fig-umap-rcl", "fig-umap-moco", "fig-hierarchy-rcl"]
    assert page.count("Plotly.newPlot(") == len(div_ids)
    assert "stopped before its final evaluation" in page


def test_write_report_accepts_a_list_and_names_runs_by_folder(runs, tmp_path):
    out = report.write_report([runs["moco"][0]], tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    assert "moco-run" in page and "fig-hierarchy" not in page
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        (runs["rcl"][0] / "metrics.jsonl").unlink()
        report.write_report([runs["rcl"][0]], tmp_path / "r2.html")
    assert not (tmp_path / "r2.html").exists()


def test_results_table_grows_rows_for_wrapped_text():
    short = figures.results_table({"a": {"criteria": ["instance"]}})
    long = figures.results_table({"a": {"criteria": ["instance"] + [f"proto-{k}" for k in range(90, 10, -10)]}})
    assert long.layout.height > short.layout.height
    # One-level datasets: no per-level kNN column (it would repeat "kNN top-1").
    one = figures.results_table({"a": {"knn_top1": 0.5, "knn_top1_per_level": {"digit": 0.5}}})
    assert not any("kNN ·" in h for h in one.data[0].header.values)
