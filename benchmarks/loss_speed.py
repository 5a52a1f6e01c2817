"""Loss benchmark: RCL forward + backward against a plain InfoNCE measured in the same run.

The issue's target: forward + backward at N = M = 4096, D = 128, against a plain InfoNCE in the same run:
H = 1 within 1.2x, H = 4 within 1.3x; peak memory within 1.5x. Every figure is printed as a ratio to the
InfoNCE reference of the same run, so a fast or slow machine does not move it.

Variants (all take the same leaf tensors ``q`` (N, D) and ``k`` (M, D), both with ``requires_grad``, so
each does the same backward work, gradients for queries and keys, as in MoCo v3's symmetric loss where a
tensor is a query in one term and a key in the other):

    infonce          F.cross_entropy(F.normalize(q) @ F.normalize(k).T / tau, arange(N))  (the reference)
    rcl_h1           RelativeContrastiveLoss, softmax form, instance criterion only  (target 1.2x / 1.5x)
    rcl_h4           softmax form, instance + 3 nested coarser levels (clusters of 8/64/512)  (1.3x / 1.5x)
    rcl_sigmoid_h4   sigmoid form, same labels: for information, no target
    supcon_naive_h4  per-criterion SupCon with a dense (N, M) mask per criterion, the "obvious" code:
                     shows what the linear-positive trick in rcl_core saves

Timing: ``--warmup`` untimed calls per variant, then ``--rounds`` rounds; each round times one forward +
backward of every variant (the order rotates from round to round) and takes each candidate's ratio to the
reference of the same round. The median of those ratios is reported (with the 25th-75th percentile), plus
absolute medians. Interleaving keeps the ratio honest on a shared, noisy machine: a slow spell hits both
sides of a ratio. With ``--quick`` the two information-only variants are timed in the first round only.

Peak memory (bytes allocated during one forward + backward, inputs excluded, gradients of q and k
included), measured on the last warm-up call: on CUDA ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``; on the CPU the allocator's own record through ``torch.profiler``
(``profile_memory=True``): every allocation and free is an event with a signed byte count, and the peak
of their running sum is the peak of live tensor memory. Cross-check on the CPU (``--memory both``, the
default unless ``--quick``): each variant in a fresh subprocess, peak resident-set growth over one
forward + backward (see ``_child``).

    .venv/bin/python benchmarks/loss_speed.py                 # full size, 15 rounds
    .venv/bin/python benchmarks/loss_speed.py --quick         # 3 rounds, allocator memory only (< 1 min)
    .venv/bin/python benchmarks/loss_speed.py --threads 1     # torch.set_num_threads(1)

The last line printed is one JSON object with the ratios, sizes and device.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# rcl_core first, as every project entry point does: it sets OMP_WAIT_POLICY=PASSIVE unless the caller set
# a value, which only takes effect before torch is loaded. Run with OMP_WAIT_POLICY=ACTIVE (or another
# value) in the environment to measure with a different policy; the value is part of the report.
from rcl_core import RelativeContrastiveLoss  # noqa: E402  (before torch, on purpose)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TAU = 0.2
REFERENCE = "infonce"
VARIANTS = ("infonce", "rcl_h1", "rcl_h4", "rcl_sigmoid_h4", "supcon_naive_h4")
INFORMATION = ("rcl_sigmoid_h4", "supcon_naive_h4")  # no target: shown for comparison
# variant -> (time ratio target, memory ratio target), from the issue
TARGETS = {"rcl_h1": (1.2, 1.5), "rcl_h4": (1.3, 1.5)}
# JSON key suffix for each variant
SHORT = {"rcl_h1": "h1", "rcl_h4": "h4", "rcl_sigmoid_h4": "sigmoid_h4", "supcon_naive_h4": "supcon_naive_h4"}
CLUSTER_SIZES = (8, 64, 512)  # levels 2..4 of the nested H = 4 criteria
SIGMOID_THRESHOLDS = (0.8, 0.5, 0.2, -0.1)


# ---------------------------------------------------------------------------------------------- workload
def nested_labels(n: int, seed: int, device, sizes=CLUSTER_SIZES) -> torch.Tensor:
    """(1 + len(sizes), n) labels, fine -> coarse: instance (the sample's index), then clusters of ``sizes``
    samples (default 8 / 64 / 512).

    Level l is ``perm // sizes[l]`` of one random permutation; with each size a multiple of the one before,
    the levels are nested (agreeing at a finer level implies agreeing at every coarser one), and the
    clusters are scattered over the batch.
    """
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(n, generator=g)
    rows = [torch.arange(n)] + [perm // size for size in sizes]
    return torch.stack(rows).to(device)


def infonce(q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference: plain InfoNCE, ``F.cross_entropy`` of the cosine logits over tau."""
    return F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU, targets)


def supcon_naive(q: torch.Tensor, k: torch.Tensor, labels_q: torch.Tensor, labels_k: torch.Tensor) -> torch.Tensor:
    """Sum over criteria of SupCon ("out" form) with a dense (N, M) positive mask per criterion."""
    logp = F.log_softmax(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU, dim=1)
    loss = logp.new_zeros(())
    for yq, yk in zip(labels_q, labels_k):
        mask = (yq[:, None] == yk[None, :]).to(logp.dtype)
        loss = loss + (-(mask * logp).sum(1) / mask.sum(1)).mean()  # every anchor has its own key
    return loss


class Workload:
    """The inputs and one closure per variant; ``step(name)`` is one forward + backward."""

    def __init__(self, n: int, d: int, device: torch.device, seed: int = 0):
        self._inputs(n, d, device, seed)
        self.labels_h1 = self.targets[None].clone()
        self.labels_h4 = nested_labels(n, seed, device)
        self.rcl = RelativeContrastiveLoss(temperature=TAU)
        self.rcl_sigmoid = RelativeContrastiveLoss(temperature=TAU, form="sigmoid", thresholds=SIGMOID_THRESHOLDS)
        self.losses = {
            "infonce": lambda: infonce(self.q, self.k, self.targets),
            "rcl_h1": lambda: self.rcl(self.q, self.k, self.labels_h1, self.labels_h1),
            "rcl_h4": lambda: self.rcl(self.q, self.k, self.labels_h4, self.labels_h4),
            "rcl_sigmoid_h4": lambda: self.rcl_sigmoid(self.q, self.k, self.labels_h4, self.labels_h4),
            "supcon_naive_h4": lambda: supcon_naive(self.q, self.k, self.labels_h4, self.labels_h4),
        }

    def _inputs(self, n: int, d: int, device: torch.device, seed: int) -> None:
        """Leaf queries and keys (N, D), both with gradients, and the instance targets."""
        self.device = device
        g = torch.Generator().manual_seed(seed)
        self.q = torch.randn(n, d, generator=g).to(device).requires_grad_()
        self.k = torch.randn(n, d, generator=g).to(device).requires_grad_()
        self.targets = torch.arange(n, device=device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clear_grads(self) -> None:
        self.q.grad = None
        self.k.grad = None

    def step(self, name: str) -> float:
        """One forward + backward; returns the loss value."""
        self.clear_grads()
        loss = self.losses[name]()
        loss.backward()
        return float(loss.detach())

    def timed_step(self, name: str) -> float:
        self.clear_grads()
        self.sync()
        start = time.perf_counter()
        self.losses[name]().backward()
        self.sync()
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- timing
def measure_times(work: Workload, variants, rounds: int, rounds_for: dict | None = None) -> dict[str, list[float]]:
    """Interleaved timing: each round times every variant once, in an order that rotates by one per round.

    ``rounds_for`` caps the rounds of some variants (they take part in the first rounds only), so that
    ratio ``r`` of every variant always pairs with the reference of the same round.
    """
    rounds_for = rounds_for or {}
    times = {name: [] for name in variants}
    for r in range(rounds):
        active = [name for name in variants if r < rounds_for.get(name, rounds)]
        shift = r % len(active)
        for name in active[shift:] + active[:shift]:
            times[name].append(work.timed_step(name))
    return times


def warm_up(work: Workload, variants, calls: int, memory: bool) -> dict[str, int] | None:
    """``calls`` untimed forward + backward per variant; the last call of each also measures peak memory."""
    for _ in range(calls - 1 if memory else calls):
        for name in variants:
            work.step(name)
    if not memory:
        return None
    if work.device.type == "cuda":
        return {name: cuda_peak(work, name) for name in variants}
    return cpu_allocator_peaks(work, variants)


def quantile(values: list[float], p: float) -> float:
    s = sorted(values)
    x = p * (len(s) - 1)
    lo, hi = math.floor(x), math.ceil(x)
    return s[lo] + (s[hi] - s[lo]) * (x - lo)


# ---------------------------------------------------------------------------------------------- memory
def cuda_peak(work: Workload, name: str) -> int:
    """Peak bytes allocated during one forward + backward, above what was allocated before it."""
    work.step(name)  # cuBLAS workspaces come from the caching allocator: keep them out of the peak
    work.clear_grads()
    gc.collect()
    work.sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(work.device)
    torch.cuda.reset_peak_memory_stats(work.device)
    work.step(name)
    work.sync()
    return torch.cuda.max_memory_allocated(work.device) - base


def cpu_allocator_peaks(work: Workload, variants) -> dict[str, int]:
    """Peak bytes of live tensor memory during one forward + backward of each variant (CPU allocator).

    One profiler session (starting one costs about a second) with each variant's step in its own
    ``record_function`` window; an allocation or free is a ``[memory]`` event with a signed byte count on
    the same clock, so a variant's peak is the highest running sum inside its window, less the sum at the
    window's start (the inputs and anything else live before the step do not count).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    work.clear_grads()  # freed before the session: a free of a block allocated outside it has no size
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name in variants:
            work.clear_grads()
            gc.collect()
            with record_function(f"loss_speed::{name}"):
                work.step(name)
    events = list(prof.profiler.kineto_results.events())
    windows = {e.name().split("::", 1)[1]: (e.start_ns(), e.end_ns()) for e in events
               if e.name().startswith("loss_speed::")}
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")), key=lambda x: x[0])
    peaks = {}
    for name in variants:
        start, end = windows[name]
        live = sum(nbytes for t, nbytes in memory if t < start)
        base = peak = live
        for t, nbytes in memory:
            if start <= t <= end:
                live += nbytes
                peak = max(peak, live)
        peaks[name] = peak - base
    return peaks


def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM and ru_maxrss) to the current RSS.

    The kernel's RSS counters are per-CPU and read approximately, so the check allows 1 MiB and retries.
    """
    for _ in range(5):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        hwm, rss = _read_status_kib("VmHWM"), _read_status_kib("VmRSS")
        if hwm is None or rss is None:
            return False
        if hwm <= rss + 1024:
            return True
    return False


def _child(args) -> None:
    """Peak resident-set growth of one forward + backward of one variant, in this fresh process.

    The parent starts it with MALLOC_MMAP_THRESHOLD_ set low, so every large buffer is its own mmap and goes
    back to the OS when freed: RSS then follows live memory closely. Preferred: a full-size warm-up step,
    then reset the peak (clear_refs) and read VmHWM - VmRSS around the measured step. Fallback without
    clear_refs: warm up at a tiny size, allocate the inputs, and take the ru_maxrss growth.
    """
    name, device = args._child, torch.device("cpu")
    if _reset_peak_rss():
        work = Workload(args.n, args.d, device, args.seed)
        work.step(name)
        work.clear_grads()
        gc.collect()
        reset = _reset_peak_rss()
        base_kib = _read_status_kib("VmRSS")
        work.step(name)
        # Without a fresh reset the mark would still hold the warm-up's peak: unmeasured rather than wrong.
        growth_kib = _read_status_kib("VmHWM") - base_kib if reset else 0
        method = "VmHWM after clear_refs"
    else:
        Workload(min(args.n, 64), args.d, device, args.seed).step(name)
        gc.collect()
        work = Workload(args.n, args.d, device, args.seed)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        work.step(name)
        growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        method = "ru_maxrss growth"
    # A growth of 0 cannot be real (the step allocates at least its N x M logits): report it as unmeasured.
    growth = growth_kib * 1024 if growth_kib > 0 else None
    print(json.dumps({"variant": name, "rss_growth_bytes": growth, "method": method}))


def rss_peaks(args, variants) -> tuple[dict[str, int], str]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    peaks, methods = {}, set()
    for name in variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, "--n", str(args.n),
               "--d", str(args.d), "--seed", str(args.seed)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"memory child for {name} failed:\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[name] = row["rss_growth_bytes"]
        methods.add(row["method"])
    return peaks, ", ".join(sorted(methods))


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096, help="batch size N = M (queries and keys)")
    p.add_argument("--d", type=int, default=128, help="feature dimension D")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (15; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per variant before timing; the last one measures memory (2; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, allocator memory only: < 1 minute")
    p.add_argument("--memory", default=None, choices=("allocator", "both", "none"),
                   help="allocator peak only, or also RSS in fresh subprocesses (CPU; default both, "
                        "allocator with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default=None, help="also write the JSON summary to PATH")
    p.add_argument("--_child", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n < 2 or args.d < 1:
        p.error("--n must be >= 2 and --d >= 1")
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.rounds < 1 or args.warmup < 1:
        p.error("--rounds and --warmup must be >= 1 (the last warm-up call measures the memory)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        _child(args)
        return {}
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available")
    memory = args.memory or ("allocator" if args.quick else "both")
    if device.type == "cuda" and memory == "both":
        memory = "allocator"  # host RSS says nothing about device memory

    work = Workload(args.n, args.d, device, args.seed)
    with torch.no_grad():  # the same loss where the maths says so: RCL H = 1 = InfoNCE, H = 4 = summed SupCon
        values = {name: float(work.losses[name]()) for name in ("infonce", "rcl_h1", "rcl_h4", "supcon_naive_h4")}
    peaks = warm_up(work, VARIANTS, args.warmup, memory != "none")
    # --quick: the information-only variants (the slowest) are timed in the first round only.
    rounds_for = {name: 1 for name in INFORMATION} if args.quick else None
    times = measure_times(work, VARIANTS, args.rounds, rounds_for)
    ref_t = times[REFERENCE]
    ratios = {name: [t / r for t, r in zip(times[name], ref_t)] for name in VARIANTS}
    mem_method = "none"
    if peaks is not None:
        mem_method = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                      else "torch.profiler profile_memory (allocator events, peak of running sum)")
    rss = None
    del work
    gc.collect()
    rss_method = None
    if memory == "both":
        rss, rss_method = rss_peaks(args, VARIANTS)

    threads = torch.get_num_threads()
    mib = 2.0 ** 20
    omp_wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"Loss forward + backward vs InfoNCE: N = M = {args.n}, D = {args.d}, tau = {TAU}, device {device}, "
          f"torch {torch.__version__}, {threads} threads, OMP_WAIT_POLICY={omp_wait}, {args.rounds} rounds")
    print(f"loss values: infonce {values['infonce']:.5f}  rcl_h1 {values['rcl_h1']:.5f}  "
          f"rcl_h4 {values['rcl_h4']:.5f}  supcon_naive_h4 {values['supcon_naive_h4']:.5f}")
    head = (f"{'variant':<16} {'ms (median)':>11} {'time ratio':>10} {'[p25, p75]':>14} {'peak MiB':>9} "
            f"{'mem ratio':>9}")
    if rss:
        head += f" {'RSS MiB':>8} {'RSS ratio':>9}"
    head += "  target"
    print(head)
    print("-" * len(head))
    result = {"n": args.n, "m": args.n, "d": args.d, "device": str(device), "torch": torch.__version__,
              "threads": threads, "omp_wait_policy": omp_wait, "rounds": args.rounds, "temperature": TAU,
              "memory_method": mem_method}
    verdicts = {}
    for name in VARIANTS:
        tr = statistics.median(ratios[name])
        row = (f"{name:<16} {1e3 * statistics.median(times[name]):>11.1f} {tr:>10.3f} "
               f"[{quantile(ratios[name], 0.25):.2f}, {quantile(ratios[name], 0.75):.2f}]".ljust(55))
        result[f"time_ms_{name}"] = 1e3 * statistics.median(times[name])
        mr = None
        if peaks:
            mr = peaks[name] / peaks[REFERENCE]
            row += f" {peaks[name] / mib:>9.1f} {mr:>9.3f}"
            result[f"peak_bytes_{name}"] = peaks[name]
        if rss:
            have = rss[name] is not None and rss[REFERENCE]
            rr = rss[name] / rss[REFERENCE] if have else None
            row += f" {rss[name] / mib:>8.1f} {rr:>9.3f}" if have else f" {'n/a':>8} {'n/a':>9}"
            result[f"rss_growth_bytes_{name}"] = rss[name]
            if name != REFERENCE:
                result[f"loss_memory_ratio_rss_{SHORT[name]}_vs_infonce"] = rr
        if name != REFERENCE:
            result[f"loss_time_ratio_{SHORT[name]}_vs_infonce"] = tr
            if mr is not None:
                result[f"loss_memory_ratio_{SHORT[name]}_vs_infonce"] = mr
        if name in TARGETS:
            t_target, m_target = TARGETS[name]
            ok_t = tr <= t_target
            ok_m = None if mr is None else mr <= m_target
            verdicts[name] = {"time": ok_t, "memory": ok_m}
            row += (f"  time <= {t_target}x {'met' if ok_t else 'MISSED'}, mem <= {m_target}x "
                    f"{'-' if ok_m is None else 'met' if ok_m else 'MISSED'}")
        elif name == REFERENCE:
            row += "  (reference)"
        else:
            row += "  (information" + (f", {len(times[name])} round)" if len(times[name]) < args.rounds else ")")
        print(row)
    if rss_method:
        print(f"memory: {mem_method}; RSS cross-check: {rss_method}, one fresh subprocess per variant")
    else:
        print(f"memory: {mem_method}")
    result["targets_met"] = verdicts
    result.update({f"loss_value_{name}": v for name, v in values.items()})
    result["python"] = platform.python_version()
    line = json.dumps(result, sort_keys=True)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
