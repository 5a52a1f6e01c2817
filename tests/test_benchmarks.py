"""The benchmark scripts run end to end on tiny sizes (no timing assertions: only the report's shape)."""
import json
import math
import subprocess
import sys
from pathlib import Path

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
