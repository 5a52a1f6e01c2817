"""The benchmark scripts run end to end on tiny sizes (no timing assertions: only the report's shape)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOSS_SPEED = ROOT / "benchmarks" / "loss_speed.py"
REQUIRED = ("loss_time_ratio_h1_vs_infonce", "loss_time_ratio_h4_vs_infonce",
            "loss_memory_ratio_h1_vs_infonce", "loss_memory_ratio_h4_vs_infonce")


def run(*args):
    # --threads 1 in the callers: on a busy 2-core machine, tiny ops with 2 OpenMP threads can stall for a
    # scheduler tick each, which makes a tiny run slow without telling anything.
    out = subprocess.run([sys.executable, str(LOSS_SPEED), *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_loss_speed_quick_prints_a_json_summary_last():
    stdout = run("--n", "256", "--d", "16", "--rounds", "2", "--quick", "--device", "cpu", "--threads", "1")
    lines = stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in REQUIRED:
        assert key in summary, key
        assert math.isfinite(summary[key]) and summary[key] > 0, (key, summary[key])
    assert summary["n"] == summary["m"] == 256 and summary["d"] == 16 and summary["device"] == "cpu"
    assert summary["targets_met"].keys() == {"rcl_h1", "rcl_h4"}
    # The workloads are what the table claims: RCL with the instance criterion is InfoNCE, and RCL with
    # four criteria is the sum of the naive per-criterion SupCon losses.
    assert math.isclose(summary["loss_value_rcl_h1"], summary["loss_value_infonce"], rel_tol=1e-5)
    assert math.isclose(summary["loss_value_rcl_h4"], summary["loss_value_supcon_naive_h4"], rel_tol=1e-5)
    assert any(line.startswith("rcl_h4") for line in lines[:-1]), "the readable table comes first"


def test_loss_speed_memory_child_reports_rss_growth():
    row = json.loads(run("--_child", "rcl_h4", "--n", "256", "--d", "16", "--threads", "1").strip().splitlines()[-1])
    assert row["variant"] == "rcl_h4" and row["method"]
    assert row["rss_growth_bytes"] is None or row["rss_growth_bytes"] > 0


def test_slider_latency_quick_prints_a_json_summary_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "slider_latency.py"), "--sizes", "64",
                          "--rounds", "2"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["n"] for r in summary["rows"]] == [64, 64] and [r["figures"] for r in summary["rows"]] == [4, 3]
    assert math.isfinite(summary["slider_latency_ms_64"]) and summary["slider_latency_ms_64"] > 0
    assert summary["slider_latency_ms_64"] == max(r["panel_ms_median"] for r in summary["rows"])


QUALITY = ROOT / "benchmarks" / "quality.py"


def test_quality_runs_a_small_grid_aggregates_the_runs_and_reads_them_back(tmp_path):
    args = [sys.executable, str(QUALITY), "--datasets", "digits", "--methods", "moco,proto,rcl", "--seeds", "2",
            "--epochs", "1", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "q.json")]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "q.json").read_text()) == results
    assert list(results) == ["digits"] and list(results["digits"]) == ["moco", "proto", "rcl"]
    for method, metrics in results["digits"].items():
        runs = [json.loads((tmp_path / "runs" / "digits" / f"{method}-s{s}" / "summary.json").read_text())
                for s in (0, 1)]
        assert [r["method"] for r in runs] == [method.split("-")[0]] * 2 and {r["epochs"] for r in runs} == {1}
        knn = [r["knn_top1_per_level"]["digit"] for r in runs]
        assert metrics["knn_top1@fine"]["values"] == knn == metrics["knn_top1@coarse"]["values"]  # one level
        assert metrics["knn_top1@fine"]["mean"] == pytest.approx(sum(knn) / 2)
        assert metrics["knn_top1@fine"]["std"] == pytest.approx(abs(knn[0] - knn[1]) / math.sqrt(2))
        assert metrics["knn_top1@fine"]["n"] == 2
        assert metrics["faithfulness"]["values"] == [r["faithfulness"] for r in runs]
        # learned criteria where the run has them, else k-means on its features
        source = "learned_nmi" if method != "moco" else "nmi"
        assert metrics["nmi@fine"]["values"] == [r[source]["digit"] for r in runs]
        assert metrics["kmeans_nmi@fine"]["values"] == [r["nmi"]["digit"] for r in runs]
    assert runs[0]["criteria"] == ["instance", "proto-64", "proto-16"]
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("read back") == 6 and json.loads(again.stdout.strip().splitlines()[-1]) == results


def test_quality_refuses_unknown_names_before_training(tmp_path):
    out = subprocess.run([sys.executable, str(QUALITY), "--methods", "moco,simclr", "--root", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode != 0 and "--methods: unknown ['simclr']" in out.stderr
    assert not any(tmp_path.iterdir())


def test_quality_metric_names_and_targets():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    summary = {"level_names": ["shape", "group", "family"], "linear_top1": 0.4, "faithfulness": 0.6,
               "knn_top1_per_level": {"shape": 0.5, "group": 0.7, "family": 0.9},
               "nmi": {"shape": 0.3, "group": 0.2, "family": 0.1}, "ari": {"shape": 0.03, "group": 0.02, "family": 0.01},
               "learned_nmi": {}, "learned_ari": {}}
    m = quality.metric_values(summary)
    assert (m["knn_top1@fine"], m["knn_top1@group"], m["knn_top1@coarse"]) == (0.5, 0.7, 0.9)
    assert m["nmi@coarse"] == 0.1 and m["ari@group"] == 0.02 and "knn_top1@shape" not in m
    learned = dict(summary, learned_nmi={"shape": 0.35, "group": 0.25, "family": 0.2},
                   learned_ari={"shape": 0.3, "group": 0.2, "family": 0.1})
    m2 = quality.metric_values(learned)
    assert m2["nmi@coarse"] == 0.2 and m2["kmeans_nmi@coarse"] == 0.1
    results = quality.aggregate({("shapes", "moco", 0): m, ("shapes", "rcl", 0): dict(m2, **{"knn_top1@fine": 0.53})})
    t = quality.targets(results)
    assert t["rcl_minus_moco_knn_fine_points"] == pytest.approx(3.0) and t["knn_fine_vs_moco_met"]
    assert t["rcl_minus_moco_nmi_coarse"] == pytest.approx(0.1) and t["nmi_coarse_vs_moco_met"]
    with pytest.raises(ValueError, match="not finite"):
        quality.aggregate({("shapes", "moco", 0): dict(m, faithfulness=float("nan"))})


def test_speed_quick_prints_the_required_figures_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--max-n", "256",
                          "--rounds", "1", "--skip", "slider,train", "--json", "/dev/null",
                          "--figure", str(ROOT / "tests" / "artifacts" / "speed_growth_test.png")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("loss_time_ratio_h4_vs_infonce", "loss_memory_ratio_h4_vs_infonce"):
        assert math.isfinite(summary[key]) and summary[key] > 0
    assert summary["headline"] == {"n": 256, "h": 4, "d": 128}
    assert "speedup_vs_pml_sum" in summary  # None without pytorch-metric-learning (the benchmark extra)
    if summary["pml_installed"]:
        assert summary["pml_sum_matches_rcl"] is True and summary["speedup_vs_pml_sum"] > 0
    sweeps = summary["loss_sweeps"]
    assert [r["h"] for r in sweeps["h"]] == [1, 2, 3, 4, 5, 6] and [r["d"] for r in sweeps["d"]] == [32, 128, 512]
    for r in sweeps["h"]:  # one round: the per-round ratio is the ratio of the two times
        assert r["rcl_time_ratio"] == pytest.approx(r["rcl_ms"] / r["infonce_ms"])
        assert r["rcl_memory_ratio"] == pytest.approx(r["rcl_peak_bytes"] / r["infonce_peak_bytes"])
    assert {(r["batch"], r["k"]) for r in summary["clustering"]} == {(b, k) for b in (128, 512) for k in (16, 64, 256)}
    assert set(summary["profile"]["phase_share"]) >= {"encoders", "criteria", "loss", "backward", "optimizer"}
    assert 0.5 < sum(summary["profile"]["phase_share"].values()) <= 1.05
