"""Measure the speed and peak memory of dflows against a reference-style one-hot implementation.

The baseline, ``reference_style.ReferenceShiftFlow``, is the same model (shift layers,
lookup-table conditioners, D = 2) written with dense one-hot vectors, FFT convolutions and
K x K roll matrices. Before timing, the script checks on random weights that both
implementations give the same log-probabilities, gradients, samples and grid densities.

It measures, in one run and on one device:

1. training steps/s and peak memory at K = 91, batch 1024, 1 and 4 shift layers, for dflows
   with and without the conditioner input gradient and for the baseline;
2. the same for K = 32 to 512, with the growth exponent of step time in K;
3. sampling 1024 points at K = 511 with 1 and 8 layers;
4. exact evaluation of all K * K cells at K = 256 with 8 layers.

Times are medians over repeats of blocks of calls, after a warm-up call, and the workloads of
one configuration are timed in turns so that a change in machine load affects all of them.
Peak memory is the transient memory of the calls that follow a warm-up call. On CPU it is the
peak resident set size of a fresh subprocess minus its resident set size before those calls.
On CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before them.

Run from the repository root::

    python benchmarks/speed.py                  # full run: several minutes on one CPU thread
    python benchmarks/speed.py --quick          # smoke test with reduced sizes: seconds
    python benchmarks/speed.py --profile        # torch.profiler tables of the main workloads
    python benchmarks/speed.py --device cuda --json speed.json --markdown speed.md

The exit status is 1 when the equivalence check fails, else 0. Goals that fail do not change
the exit status, because they are measurements, not tests.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dflows
from dflows import aggregated
from reference_style import ReferenceShiftFlow

REPOSITORY = Path(__file__).resolve().parent.parent

# Training settings: the straight-through temperature and Adam learning rate that the
# dflows Trainer uses by default.
TEMPERATURE = 0.1
LEARNING_RATE = 0.01
BATCH_SIZE = 1024
SEED = 0

# Figure 2 of Tran et al. (2019), "Discrete Flows", arXiv:1905.10347, fits a 2-D
# distribution on a 91 x 91 grid.
FIGURE2_VOCAB_SIZE = 91
SAMPLE_COUNT = 1024

# Goals that the results are compared against.
TRAINING_SPEEDUP_GOAL = 10.0
# Step time "grows at most linearly in K" when the least-squares slope of log(time) against
# log(K) is at most this. The 0.1 above 1 leaves room for timer noise.
LINEAR_EXPONENT_LIMIT = 1.1
SAMPLING_SECONDS_GOAL = 1.0
SAMPLING_BYTES_GOAL = 100 * 2**20
GRID_SECONDS_GOAL = 0.050

# Equivalence check tolerances. The baseline's FFTs and float32 sums differ from the exact
# integer path by about 1e-6 nats at K = 91.
LOG_PROB_TOLERANCE = 1e-4
RELATIVE_GRADIENT_TOLERANCE = 1e-4

MIN_REPEATS = 3
MAX_CALLS_PER_BLOCK = 1000
MIB = 2**20


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets of one benchmark run."""

    training_vocab_sizes: tuple[int, ...]
    training_layers: tuple[int, ...]
    sampling_vocab_size: int
    sampling_layers: tuple[int, ...]
    grid_vocab_size: int
    grid_layers: int
    # Each timed block of calls lasts at least this long, so that short calls are not
    # dominated by the clock's resolution.
    min_block_seconds: float
    # A workload whose single call is slow gets fewer repeats (at least MIN_REPEATS) so that
    # it takes about this long in total.
    max_workload_seconds: float
    # Calls measured for peak memory, after one warm-up call.
    memory_calls: int
    # False measures memory only for the dflows K = 91, 1-layer training workload.
    memory_everywhere: bool


FULL_PLAN = Plan(
    training_vocab_sizes=(32, 64, 91, 128, 256, 512),
    training_layers=(1, 4),
    sampling_vocab_size=511,
    sampling_layers=(1, 8),
    grid_vocab_size=256,
    grid_layers=8,
    min_block_seconds=0.2,
    max_workload_seconds=60.0,
    memory_calls=3,
    memory_everywhere=True,
)

QUICK_PLAN = Plan(
    training_vocab_sizes=(32, 91),
    training_layers=(1, 4),
    sampling_vocab_size=63,
    sampling_layers=(1, 8),
    grid_vocab_size=64,
    grid_layers=8,
    min_block_seconds=0.02,
    max_workload_seconds=1.0,
    memory_calls=2,
    memory_everywhere=False,
)


def layers_text(layers: int) -> str:
    return f"{layers} layer" if layers == 1 else f"{layers} layers"


# Workloads.


def create_model(vocab_size: int, layers: int, device: torch.device) -> dflows.DiscreteFlow:
    """Build the benchmarked dflows model: shift layers with lookup-table conditioners."""
    config = dflows.FlowConfig(
        vocab_size=vocab_size, layers=layers, layer_type="shift", conditioner="table"
    )
    return dflows.create_flow(config, SEED).to(device)


def build_training_step(spec: dict, device: torch.device) -> Callable[[], None]:
    """Build a model and a fixed batch, and return a call that makes one Adam step on it.

    The step is the one the Trainer makes for the sampled objective, but it leaves out the Trainer's bookkeeping: drawing the batch, the finiteness check of
    the gradients and the history.
    """
    vocab_size = spec["vocab_size"]
    model = create_model(vocab_size, spec["layers"], device)
    reference = spec["implementation"] == "reference"
    if reference:
        model = ReferenceShiftFlow.from_dflows(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(SEED)
    data = torch.randint(0, vocab_size, (spec["batch_size"], 2), generator=generator).to(device)

    if not reference and aggregated.supports(model, spec["input_gradient"]):
        # Without input gradients the Trainer takes the aggregated path, which needs no
        # one-hot codes, with fused Adam; time that, not the generic path.
        weight = 1.0 / len(data)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=device.type in ("cpu", "cuda"))

        def aggregated_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            aggregated.weighted_nll_backward(model, data, weight, TEMPERATURE)
            optimizer.step()

        return aggregated_step

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        codes = F.one_hot(data, vocab_size).to(torch.float32)
        if reference:
            log_q = model.log_prob_codes(codes, TEMPERATURE)
        else:
            log_q = model.log_prob_codes(codes, TEMPERATURE, input_gradient=spec["input_gradient"])
        loss = -log_q.mean()
        loss.backward()
        optimizer.step()

    return step


def build_sampling(spec: dict, device: torch.device) -> Callable[[], None]:
    """Return a call that draws ``spec["count"]`` points from a fresh model."""
    model = create_model(spec["vocab_size"], spec["layers"], device)
    if spec["implementation"] == "reference":
        model = ReferenceShiftFlow.from_dflows(model)
    generator = torch.Generator().manual_seed(SEED)
    return lambda: model.sample(spec["count"], generator)


def build_grid_evaluation(spec: dict, device: torch.device) -> Callable[[], None]:
    """Return a call that evaluates ``log q`` on every cell of the K x K grid."""
    model = create_model(spec["vocab_size"], spec["layers"], device)
    if spec["implementation"] == "reference":
        model = ReferenceShiftFlow.from_dflows(model)
    return model.log_density


WORKLOAD_BUILDERS = {
    "train": build_training_step,
    "sample": build_sampling,
    "grid": build_grid_evaluation,
}


def build_workload(spec: dict, device: torch.device) -> Callable[[], None]:
    """Build the model and inputs that ``spec`` describes and return the call to measure."""
    return WORKLOAD_BUILDERS[spec["kind"]](spec, device)


# Timing.


@dataclass
class Timing:
    """Seconds per call of one workload: the median, min and max over repeats."""

    median: float
    min: float
    max: float
    repeats: int
    calls_per_repeat: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_calls(run: Callable[[], None], calls: int, device: torch.device) -> float:
    """Return the seconds that ``calls`` calls of ``run`` take, with the device synchronized."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        run()
    synchronize(device)
    return time.perf_counter() - started


def time_interleaved(
    workloads: dict[str, Callable[[], None]], device: torch.device, plan: Plan, repeats: int
) -> dict[str, Timing]:
    """Time each workload in blocks of calls, taking the workloads in turns in every round.

    Every workload is called once as a warm-up and once more to size its blocks, and neither
    call is counted. The starting workload rotates between rounds, so that none always runs
    first.
    """
    calls: dict[str, int] = {}
    repeat_counts: dict[str, int] = {}
    for name, run in workloads.items():
        run()
        single = max(clock_calls(run, 1, device), 1e-9)
        calls[name] = max(1, min(MAX_CALLS_PER_BLOCK, math.ceil(plan.min_block_seconds / single)))
        affordable = int(plan.max_workload_seconds / (single * calls[name]))
        repeat_counts[name] = min(repeats, max(MIN_REPEATS, affordable))

    samples: dict[str, list[float]] = {name: [] for name in workloads}
    names = list(workloads)
    for round_index in range(max(repeat_counts.values())):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if len(samples[name]) < repeat_counts[name]:
                seconds = clock_calls(workloads[name], calls[name], device)
                samples[name].append(seconds / calls[name])

    return {
        name: Timing(
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            repeats=len(values),
            calls_per_repeat=calls[name],
        )
        for name, values in samples.items()
    }


# Peak memory.


@dataclass
class Memory:
    """Peak memory of a workload's calls above its memory after a warm-up call, and the method."""

    peak_bytes: int
    method: str


def _proc_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process (Linux 4.0 and later); return success."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        _proc_status_kib("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc only), so that reusing them counts as growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_memory_probe(spec: dict, calls: int) -> Memory:
    """Measure the peak RSS growth of ``calls`` calls of a CPU workload in this process.

    One call runs before the baseline is taken, so that one-time costs (lazy initialisation,
    Adam's state) are left out and the result is the transient memory of a call. Meant for a
    fresh process that runs nothing else, because memory freed earlier and still resident is
    reused without growing the RSS.
    """
    run = build_workload(spec, torch.device("cpu"))
    run()
    gc.collect()
    _release_free_heap()
    if _reset_peak_rss():
        baseline = _proc_status_kib("VmRSS")
        for _ in range(calls):
            run()
        peak = _proc_status_kib("VmHWM")
        method = "peak RSS (VmHWM, reset after a warm-up call) minus RSS before the timed calls, fresh subprocess"
    else:
        # NOTE: without the reset, a peak reached during imports, setup or the warm-up call
        # hides any smaller peak of the timed calls, so this fallback can report too little.
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(calls):
            run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss growth after a warm-up call, fresh subprocess"
    return Memory(peak_bytes=max(0, peak - baseline) * 1024, method=method)


def measure_cuda_memory(spec: dict, device: torch.device, calls: int) -> Memory:
    """Measure the peak CUDA memory of ``calls`` calls beyond the memory after one warm-up call."""
    # NOTE: this function and the CUDA synchronization in clock_calls have not been run on a
    # GPU yet; only the CPU path has produced results.
    run = build_workload(spec, device)
    run()
    gc.collect()
    torch.cuda.empty_cache()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    for _ in range(calls):
        run()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return Memory(
        peak_bytes=peak - baseline,
        method="torch.cuda.max_memory_allocated minus memory allocated after a warm-up call",
    )


def measure_memory(spec: dict, device: torch.device, threads: int, calls: int) -> Memory:
    """Measure the peak memory of a workload: in this process on CUDA, else in a subprocess."""
    if device.type == "cuda":
        return measure_cuda_memory(spec, device, calls)
    command = [
        sys.executable, str(Path(__file__).resolve()),
        "--memory-probe", json.dumps(spec),
        "--threads", str(threads),
        "--memory-calls", str(calls),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"memory probe for {spec} failed with exit status {result.returncode}:\n{result.stderr}"
        )
    values = json.loads(result.stdout.strip().splitlines()[-1])
    return Memory(**values)


# Equivalence of dflows and the baseline.


def _random_model(vocab_size: int, layers: int, device: torch.device) -> dflows.DiscreteFlow:
    """Build a flow whose layers move almost every point, so that the check is not trivial.

    The default initialisation favours ``loc = 0`` in every row, which makes a new flow the
    identity map.
    """
    config = dflows.FlowConfig(
        vocab_size=vocab_size, layers=layers, identity_bias=0.0, init_std=1.0
    )
    model = dflows.create_flow(config, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.base.logits.copy_(torch.randn(model.base.logits.shape, generator=generator))
    return model.to(device)


def _max_relative_gradient_error(model: dflows.DiscreteFlow, reference: ReferenceShiftFlow) -> float:
    pairs = [(layer.conditioner.table.grad, table.grad) for layer, table in zip(model.layers, reference.tables)]
    pairs.append((model.base.logits.grad, reference.base_logits.grad))
    errors = []
    for expected, actual in pairs:
        scale = float(expected.abs().max()) or 1.0
        errors.append(float((expected - actual).abs().max()) / scale)
    return max(errors)


def check_equivalence(device: torch.device, grid_vocab_size: int, grid_layers: int) -> dict:
    """Compare dflows and the baseline on the same random weights; return the differences."""
    vocab_size, layers = FIGURE2_VOCAB_SIZE, 4
    model = _random_model(vocab_size, layers, device)
    reference = ReferenceShiftFlow.from_dflows(model)
    generator = torch.Generator().manual_seed(3)
    data = torch.randint(0, vocab_size, (BATCH_SIZE, 2), generator=generator).to(device)
    codes = F.one_hot(data, vocab_size).to(torch.float32)

    log_q = model.log_prob_codes(codes, TEMPERATURE, input_gradient=True)
    log_q_reference = reference.log_prob_codes(codes, TEMPERATURE)
    log_q_exact = model.log_prob(data)
    (-log_q.mean()).backward()
    (-log_q_reference.mean()).backward()

    sample_seed = 4
    samples = model.sample(BATCH_SIZE, torch.Generator().manual_seed(sample_seed))
    samples_reference = reference.sample(BATCH_SIZE, torch.Generator().manual_seed(sample_seed))
    latents = torch.randint(0, vocab_size, (BATCH_SIZE, 2), generator=generator).to(device)
    inverse = model.inverse(latents)
    inverse_reference = reference.inverse_codes(F.one_hot(latents, vocab_size).to(torch.float32))

    grid_model = _random_model(grid_vocab_size, grid_layers, device)
    grid_difference = np.abs(
        grid_model.log_density() - ReferenceShiftFlow.from_dflows(grid_model).log_density()
    ).max()

    result = {
        "vocab_size": vocab_size,
        "layers": layers,
        "points": BATCH_SIZE,
        "moved_fraction": float((model(data) != data).any(dim=1).float().mean()),
        "log_prob_max_difference": float((log_q - log_q_reference).detach().abs().max()),
        "log_prob_exact_max_difference": float((log_q.detach().double() - log_q_exact).abs().max()),
        "gradient_max_relative_difference": _max_relative_gradient_error(model, reference),
        "samples_equal": bool(torch.equal(samples, samples_reference)),
        "inverse_equal": bool(torch.equal(inverse, inverse_reference.argmax(dim=-1))),
        "grid_vocab_size": grid_vocab_size,
        "grid_layers": grid_layers,
        "grid_log_density_max_difference": float(grid_difference),
    }
    result["passed"] = (
        result["log_prob_max_difference"] <= LOG_PROB_TOLERANCE
        and result["log_prob_exact_max_difference"] <= LOG_PROB_TOLERANCE
        and result["gradient_max_relative_difference"] <= RELATIVE_GRADIENT_TOLERANCE
        and result["samples_equal"]
        and result["inverse_equal"]
        and result["grid_log_density_max_difference"] <= LOG_PROB_TOLERANCE
    )
    return result


def format_check(check: dict) -> list[str]:
    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISMATCH"

    return [
        f"Same weights in both implementations (random, K={check['vocab_size']}, "
        f"{layers_text(check['layers'])}, {check['points']} points; the flow moves "
        f"{100 * check['moved_fraction']:.0f}% of them):",
        "",
        f"- log q on the one-hot path, max |dflows - reference|: "
        f"{check['log_prob_max_difference']:.1e} nats (tolerance {LOG_PROB_TOLERANCE:.0e}) "
        f"{verdict(check['log_prob_max_difference'] <= LOG_PROB_TOLERANCE)}",
        f"- dflows one-hot path against its integer path (`log_prob`): "
        f"{check['log_prob_exact_max_difference']:.1e} nats "
        f"{verdict(check['log_prob_exact_max_difference'] <= LOG_PROB_TOLERANCE)}",
        f"- gradients of every table and of the base logits, max relative difference: "
        f"{check['gradient_max_relative_difference']:.1e} (tolerance "
        f"{RELATIVE_GRADIENT_TOLERANCE:.0e}) "
        f"{verdict(check['gradient_max_relative_difference'] <= RELATIVE_GRADIENT_TOLERANCE)}",
        f"- samples from the same generator seed identical: {verdict(check['samples_equal'])}",
        f"- inverse of the same latents identical: {verdict(check['inverse_equal'])}",
        f"- grid log density, K={check['grid_vocab_size']} with {layers_text(check['grid_layers'])}, "
        f"max difference: {check['grid_log_density_max_difference']:.1e} nats "
        f"{verdict(check['grid_log_density_max_difference'] <= LOG_PROB_TOLERANCE)}",
    ]


# Measurements.

TRAINING_VARIANTS = {
    "dflows": {"implementation": "dflows", "input_gradient": True},
    "dflows_no_input_gradient": {"implementation": "dflows", "input_gradient": False},
    "reference": {"implementation": "reference", "input_gradient": None},
}


@dataclass
class Context:
    """Settings shared by every measurement of a run."""

    plan: Plan
    device: torch.device
    repeats: int
    threads: int

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def measure_specs(
    context: Context, specs: dict[str, dict], with_memory: Callable[[str], bool]
) -> dict:
    """Time the workloads of ``specs`` in turns, then measure their peak memory.

    Memory is measured only for the workloads whose names ``with_memory`` accepts.
    """
    workloads = {name: build_workload(spec, context.device) for name, spec in specs.items()}
    timings = time_interleaved(workloads, context.device, context.plan, context.repeats)
    del workloads
    gc.collect()

    memory = {}
    for name, spec in specs.items():
        if with_memory(name):
            measured = measure_memory(spec, context.device, context.threads, context.plan.memory_calls)
            memory[name] = asdict(measured)
    return {"timings": {name: asdict(t) for name, t in timings.items()}, "memory": memory}


def measure_training(context: Context) -> list[dict]:
    rows = []
    for vocab_size in context.plan.training_vocab_sizes:
        for layers in context.plan.training_layers:
            specs = {
                name: {"kind": "train", "vocab_size": vocab_size, "layers": layers,
                       "batch_size": BATCH_SIZE, **variant}
                for name, variant in TRAINING_VARIANTS.items()
            }

            def with_memory(name: str) -> bool:
                figure2 = vocab_size == FIGURE2_VOCAB_SIZE and layers == 1 and name == "dflows"
                return context.plan.memory_everywhere or figure2

            row = {"vocab_size": vocab_size, "layers": layers}
            row.update(measure_specs(context, specs, with_memory))
            rows.append(row)
            medians = ", ".join(
                f"{name} {1e3 * timing['median']:.2f} ms" for name, timing in row["timings"].items()
            )
            context.log(f"training K={vocab_size}, {layers_text(layers)}: {medians}")
    return rows


def measure_sampling(context: Context) -> list[dict]:
    rows = []
    vocab_size = context.plan.sampling_vocab_size
    for layers in context.plan.sampling_layers:
        specs = {
            name: {"kind": "sample", "implementation": name, "vocab_size": vocab_size,
                   "layers": layers, "count": SAMPLE_COUNT}
            for name in ("dflows", "reference")
        }
        row = {"vocab_size": vocab_size, "layers": layers, "count": SAMPLE_COUNT}
        row.update(measure_specs(context, specs, lambda name: context.plan.memory_everywhere))
        rows.append(row)
        context.log(f"sampling K={vocab_size}, {layers_text(layers)}: done")
    return rows


def measure_grid(context: Context) -> dict:
    vocab_size, layers = context.plan.grid_vocab_size, context.plan.grid_layers
    specs = {
        name: {"kind": "grid", "implementation": name, "vocab_size": vocab_size, "layers": layers}
        for name in ("dflows", "reference")
    }
    row = {"vocab_size": vocab_size, "layers": layers}
    row.update(measure_specs(context, specs, lambda name: context.plan.memory_everywhere))
    context.log(f"grid K={vocab_size}, {layers_text(layers)}: done")
    return row


def fit_growth(rows: list[dict], variant: str, layers: int) -> dict:
    """Fit ``time ~ K ** exponent`` by least squares on log-log axes over the measured K."""
    points = sorted(
        (row["vocab_size"], row["timings"][variant]["median"])
        for row in rows
        if row["layers"] == layers
    )
    vocab_sizes = np.array([size for size, _ in points], dtype=np.float64)
    seconds = np.array([value for _, value in points])
    exponent = float(np.polyfit(np.log(vocab_sizes), np.log(seconds), 1)[0])
    last_exponent = float(
        math.log(seconds[-1] / seconds[-2]) / math.log(vocab_sizes[-1] / vocab_sizes[-2])
    )
    return {
        "variant": variant,
        "layers": layers,
        "vocab_sizes": [int(size) for size in vocab_sizes],
        "exponent": exponent,
        "last_exponent": last_exponent,
    }


# Goals.


@dataclass
class Goal:
    """One goal, the measured value it is judged on, and PASS, FAIL or why it was skipped."""

    goal: str
    measured: str
    status: str


def _median(row: dict, name: str) -> float:
    return row["timings"][name]["median"]


def _peak_bytes(row: dict, name: str) -> int | None:
    memory = row["memory"].get(name)
    return None if memory is None else memory["peak_bytes"]


def evaluate_goals(results: dict, context: Context) -> list[Goal]:
    goals = []
    full = context.plan == FULL_PLAN
    on_cpu = context.device.type == "cpu"

    for row in results["training"]:
        if row["vocab_size"] != FIGURE2_VOCAB_SIZE:
            continue
        for variant, label in (("dflows", "input gradient"), ("dflows_no_input_gradient", "no input gradient")):
            speedup = _median(row, "reference") / _median(row, variant)
            goals.append(Goal(
                f"training >= {TRAINING_SPEEDUP_GOAL:.0f}x the reference, K={FIGURE2_VOCAB_SIZE}, "
                f"{layers_text(row['layers'])}, {label}",
                f"{speedup:.2f}x",
                "PASS" if speedup >= TRAINING_SPEEDUP_GOAL else "FAIL",
            ))

    for fit in results["growth"]:
        if fit["variant"] == "reference":
            continue
        if full:
            status = "PASS" if fit["exponent"] <= LINEAR_EXPONENT_LIMIT else "FAIL"
        else:
            status = f"skipped: quick mode measures K up to {fit['vocab_sizes'][-1]} only"
        goals.append(Goal(
            f"step time at most linear in K ({fit['variant']}, {layers_text(fit['layers'])})",
            f"exponent {fit['exponent']:.2f} over K={fit['vocab_sizes'][0]}..{fit['vocab_sizes'][-1]}",
            status,
        ))

    for row in results["sampling"]:
        seconds = _median(row, "dflows")
        peak = _peak_bytes(row, "dflows")
        passed = seconds < SAMPLING_SECONDS_GOAL and (peak is None or peak < SAMPLING_BYTES_GOAL)
        memory_text = "memory not measured" if peak is None else f"{peak / MIB:.1f} MiB"
        if full:
            status = "PASS" if passed else "FAIL"
        else:
            status = f"skipped: quick mode samples at K={row['vocab_size']}"
        goals.append(Goal(
            f"sampling {row['count']} points at K={row['vocab_size']}, {layers_text(row['layers'])}, "
            f"< {SAMPLING_SECONDS_GOAL:.0f} s and < {SAMPLING_BYTES_GOAL / MIB:.0f} MiB",
            f"{1e3 * seconds:.1f} ms, {memory_text}",
            status,
        ))

    grid = results["grid"]
    seconds = _median(grid, "dflows")
    if not full:
        status = f"skipped: quick mode evaluates K={grid['vocab_size']}"
    elif not on_cpu:
        status = "not applicable: the goal is for the CPU"
    else:
        status = "PASS" if seconds <= GRID_SECONDS_GOAL else "FAIL"
    goals.append(Goal(
        f"exact grid evaluation, K={grid['vocab_size']}, {layers_text(grid['layers'])}, "
        f"<= {1e3 * GRID_SECONDS_GOAL:.0f} ms on CPU",
        f"{1e3 * seconds:.1f} ms",
        status,
    ))
    return goals


# Machine description.


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPOSITORY), *arguments],
            capture_output=True, text=True, check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def describe_machine(device: torch.device) -> dict:
    modified = _git("status", "--porcelain", "--", "dflows")
    machine = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "dflows_uncommitted_changes": None if modified is None else modified.splitlines(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return machine


def format_machine(machine: dict) -> list[str]:
    changes = machine["dflows_uncommitted_changes"]
    if changes is None:
        change_text = "unknown"
    elif changes:
        change_text = ", ".join(change.strip() for change in changes)
    else:
        change_text = "none"
    return [
        f"- CPU: {machine['cpu']}, {machine['logical_cores']} logical cores "
        f"({machine['usable_cores']} usable), torch threads: {machine['torch_threads']}",
        f"- device: {machine['device']} ({machine['device_name']})",
        f"- torch {machine['torch']}, numpy {machine['numpy']}, Python {machine['python']}, "
        f"{machine['platform']}",
        f"- commit {machine['git_commit']}, uncommitted changes in dflows/: {change_text}",
    ]


# Tables.


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _mib(row: dict, name: str) -> str:
    peak = _peak_bytes(row, name)
    return "-" if peak is None else f"{peak / MIB:.1f}"


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f}" if seconds < 0.1 else f"{1e3 * seconds:.0f}"


def format_figure2(rows: list[dict]) -> list[str]:
    table = []
    for row in rows:
        if row["vocab_size"] != FIGURE2_VOCAB_SIZE:
            continue
        with_gradient = _median(row, "dflows")
        without_gradient = _median(row, "dflows_no_input_gradient")
        reference = _median(row, "reference")
        table.append([
            str(row["layers"]),
            f"{1 / with_gradient:.0f}",
            f"{1 / without_gradient:.0f}",
            f"{1 / reference:.0f}",
            f"{reference / with_gradient:.2f}x",
            f"{reference / without_gradient:.2f}x",
            f"{with_gradient / without_gradient:.2f}x",
            f"{_mib(row, 'dflows')} / {_mib(row, 'dflows_no_input_gradient')} / {_mib(row, 'reference')}",
        ])
    headers = [
        "layers", "dflows steps/s", "dflows steps/s, no input gradient", "reference steps/s",
        "speedup", "speedup, no input gradient", "gain from no input gradient",
        "peak MiB: dflows / no input gradient / reference",
    ]
    return markdown_table(headers, table)


def format_training(rows: list[dict]) -> list[str]:
    table = []
    for row in sorted(rows, key=lambda row: (row["layers"], row["vocab_size"])):
        vocab_size = row["vocab_size"]
        cells = [str(vocab_size), str(row["layers"])]
        for name in TRAINING_VARIANTS:
            seconds = _median(row, name)
            cells.append(f"{_ms(seconds)} ({1e6 * seconds / vocab_size:.1f})")
        reference = _median(row, "reference")
        cells.append(f"{reference / _median(row, 'dflows'):.2f}x")
        cells.append(f"{reference / _median(row, 'dflows_no_input_gradient'):.2f}x")
        cells.append(
            f"{_mib(row, 'dflows')} / {_mib(row, 'dflows_no_input_gradient')} / {_mib(row, 'reference')}"
        )
        table.append(cells)
    headers = [
        "K", "layers", "dflows ms/step (µs per class)",
        "dflows, no input gradient, ms/step (µs per class)", "reference ms/step (µs per class)",
        "speedup", "speedup, no input gradient", "peak MiB: dflows / no input gradient / reference",
    ]
    return markdown_table(headers, table)


def format_growth(fits: list[dict]) -> list[str]:
    table = [
        [fit["variant"], str(fit["layers"]), f"{fit['exponent']:.2f}", f"{fit['last_exponent']:.2f}"]
        for fit in fits
    ]
    first, last = fits[0]["vocab_sizes"][0], fits[0]["vocab_sizes"][-1]
    previous = fits[0]["vocab_sizes"][-2]
    headers = [
        "implementation", "layers", f"exponent, fit over K={first}..{last}",
        f"exponent from K={previous} to K={last}",
    ]
    return markdown_table(headers, table)


def format_pair(rows: list[dict]) -> list[str]:
    """Format sampling or grid rows, which compare dflows with the reference only."""
    table = []
    for row in rows:
        flow, reference = _median(row, "dflows"), _median(row, "reference")
        table.append([
            str(row["vocab_size"]), str(row["layers"]), _ms(flow), _ms(reference),
            f"{reference / flow:.0f}x", _mib(row, "dflows"), _mib(row, "reference"),
        ])
    headers = [
        "K", "layers", "dflows ms", "reference ms", "speedup", "dflows peak MiB",
        "reference peak MiB",
    ]
    return markdown_table(headers, table)


def format_goals(goals: list[Goal]) -> list[str]:
    return markdown_table(
        ["goal", "measured", "result"], [[goal.goal, goal.measured, goal.status] for goal in goals]
    )


def _largest_spread(results: dict) -> str:
    """Name the timing whose repeats varied most, as a summary of the run's noise."""
    labelled = []
    for section in ("training", "sampling", "grid"):
        rows = results[section] if section != "grid" else [results[section]]
        for row in rows:
            for name, timing in row["timings"].items():
                spread = (timing["max"] - timing["min"]) / timing["median"]
                label = f"{section} K={row['vocab_size']}, {layers_text(row['layers'])}, {name}"
                labelled.append((spread, label))
    spread, label = max(labelled)
    return f"{100 * spread:.0f}% ({label})"


def format_settings(results: dict) -> list[str]:
    settings = results["settings"]
    machine = results["machine"]
    memory_methods = sorted({
        memory["method"]
        for section in (results["training"], results["sampling"], [results["grid"]])
        for row in section
        for memory in row["memory"].values()
    })
    return [
        f"Settings: {settings['mode']} mode, {settings['threads']} torch thread(s), median of up "
        f"to {settings['repeats']} repeats after a warm-up call, batch {BATCH_SIZE}, "
        f"temperature {TEMPERATURE}, Adam lr {LEARNING_RATE}.",
        f"Peak memory: {'; '.join(memory_methods) or 'not measured'}.",
        f"Noise: 1-minute load average {machine['load_average_at_start']:.2f} at the start and "
        f"{machine['load_average_at_end']:.2f} at the end; the largest (max - min) / median of "
        f"the repeats of any timing is {_largest_spread(results)}.",
    ]


def format_tables(results: dict) -> list[str]:
    lines = [f"### Training at K = {FIGURE2_VOCAB_SIZE} (the Figure 2 workload of Tran et al., 2019)", ""]
    lines += format_figure2(results["training"])
    lines += ["", "### Training step time against K", ""]
    lines += format_training(results["training"])
    lines += [""]
    lines += format_growth(results["growth"])
    lines += ["", f"### Sampling {SAMPLE_COUNT} points", ""]
    lines += format_pair(results["sampling"])
    lines += ["", "### Exact evaluation of all K * K cells", ""]
    lines += format_pair([results["grid"]])
    lines += ["", "### Goals", ""]
    lines += format_goals([Goal(**goal) for goal in results["goals"]])
    return lines


def format_report(results: dict) -> str:
    """Format the whole run as Markdown: machine, settings, check, tables and goals."""
    lines = ["### Machine", ""] + format_machine(results["machine"])
    lines += [""] + format_settings(results)
    lines += ["", "### Equivalence check", ""] + format_check(results["check"])
    lines += [""] + format_tables(results)
    return "\n".join(lines) + "\n"


# Profiling.

PROFILE_STEPS = 20


def profile_workloads(device: torch.device, rows: int) -> str:
    """Profile the main workloads with torch.profiler and return their top operators.

    The workloads are the K = 91, 4-layer training step of each training variant and dflows
    sampling of 1024 points at K = 511 with 8 layers. For each, the ``rows`` operators with
    the largest self time are listed. Profiling slows every operator, so the times add up to
    more than the benchmark's medians.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    specs = {
        f"training {name}, K={FIGURE2_VOCAB_SIZE}, 4 layers": {
            "kind": "train", "vocab_size": FIGURE2_VOCAB_SIZE, "layers": 4,
            "batch_size": BATCH_SIZE, **variant,
        }
        for name, variant in TRAINING_VARIANTS.items()
    }
    specs[f"sampling {SAMPLE_COUNT} points, dflows, K=511, 8 layers"] = {
        "kind": "sample", "implementation": "dflows", "vocab_size": 511, "layers": 8,
        "count": SAMPLE_COUNT,
    }

    sections = []
    for title, spec in specs.items():
        step = build_workload(spec, device)
        for _ in range(3):
            step()
        synchronize(device)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(PROFILE_STEPS):
                step()
            synchronize(device)
        table = profiler.key_averages().table(sort_by=sort_key, row_limit=rows)
        sections.append(f"{title}, {PROFILE_STEPS} calls:\n{table}")
    return "\n".join(sections)


# Command line.


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: use an integer of at least 1")
    return value


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure training, sampling and grid-evaluation speed and peak memory of "
        "dflows against a reference-style one-hot implementation.",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument(
        "--repeats", type=positive_int, default=None,
        help="timed repeats per workload; slow workloads get fewer, at least 3 (default: 7, 3 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test with reduced sizes, a few seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results as JSON to PATH")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the result tables as Markdown to PATH")
    parser.add_argument(
        "--profile", action="store_true",
        help="print the operators that take the most time in the K=91, 4-layer training step "
        "of each implementation and in dflows sampling at K=511, then exit",
    )
    parser.add_argument("--memory-probe", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--memory-calls", type=positive_int, default=3, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_benchmark(arguments: argparse.Namespace, device: torch.device) -> dict:
    plan = QUICK_PLAN if arguments.quick else FULL_PLAN
    repeats = arguments.repeats or (3 if arguments.quick else 7)
    context = Context(plan=plan, device=device, repeats=repeats, threads=arguments.threads)

    results = {
        "machine": describe_machine(device),
        "settings": {
            "mode": "quick" if arguments.quick else "full",
            "repeats": repeats,
            "threads": arguments.threads,
            "plan": asdict(plan),
            "batch_size": BATCH_SIZE,
            "temperature": TEMPERATURE,
            "learning_rate": LEARNING_RATE,
        },
    }
    print("\n".join(["### Machine", ""] + format_machine(results["machine"]) + [""]), flush=True)
    context.log("checking that dflows and the reference give the same results")
    results["check"] = check_equivalence(device, plan.grid_vocab_size, plan.grid_layers)
    print("\n".join(["### Equivalence check", ""] + format_check(results["check"]) + [""]), flush=True)

    results["training"] = measure_training(context)
    results["growth"] = [
        fit_growth(results["training"], variant, layers)
        for layers in plan.training_layers
        for variant in TRAINING_VARIANTS
    ]
    results["sampling"] = measure_sampling(context)
    results["grid"] = measure_grid(context)
    results["goals"] = [asdict(goal) for goal in evaluate_goals(results, context)]
    results["machine"]["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return results


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)

    if arguments.memory_probe is not None:
        memory = run_memory_probe(json.loads(arguments.memory_probe), arguments.memory_calls)
        print(json.dumps(asdict(memory)))
        return 0

    try:
        device = dflows.resolve_device(arguments.device)
    except dflows.DeviceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if arguments.profile:
        print(profile_workloads(device, rows=15))
        return 0

    results = run_benchmark(arguments, device)
    print("\n".join(format_settings(results) + [""] + format_tables(results)))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
    if arguments.markdown is not None:
        arguments.markdown.write_text(format_report(results))
    if not results["check"]["passed"]:
        print("error: dflows and the reference-style flow disagree; the timings compare "
              "different computations", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
