"""The parent side of a benchmark run: one subprocess per configuration, results collected, compared, described.

Each configuration runs in ``python -m revtal.bench.worker``, for memory runs with ``MALLOC_MMAP_THRESHOLD_=65536``
and for speed runs with the C library's default allocator (see :mod:`revtal.bench.worker` for why and for what is
measured). Ratios are taken between configurations that differ
only in the mode: to ``conventional`` (plain autograd on the unconverted backbone) and to ``checkpoint`` (per-block
activation checkpointing of the same network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterable

import torch

from revtal.bench.configs import PEER_MODES, RESULT_PREFIX, BenchConfig, record_label
from revtal.bench.peers import INSTALL_HINT
from revtal.utils.progress import progress as progress_bar
from revtal.utils.provenance import source_commit

MMAP_THRESHOLD = "65536"
# measured quantities that get ratios, and the prefix of their ratio fields
RATIO_FIELDS = {"saved_bytes": "saved", "peak_bytes": "peak", "cuda_max_allocated_bytes": "cuda", "step_time_s": "time"}
REFERENCE_MODES = ("conventional", "checkpoint")


@dataclass
class RunResult:
    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {config..., status, reason}: unavailable or failed


def run_in_subprocess(config: BenchConfig, timeout_s: float | None = None) -> dict:
    """Measure one configuration in a fresh process; returns its record, or a status/reason entry."""
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if config.allocator == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    command = [sys.executable, "-m", "revtal.bench.worker", config.to_json()]
    entry = {**json.loads(config.to_json()), "label": config.label}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**entry, "status": "error", "reason": f"timed out after {timeout_s:.0f} s"}
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not results:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit code {done.returncode}"
        return {**entry, "status": "error", "reason": f"worker gave no result, {why}: " + " | ".join(tail)}
    result = json.loads(results[-1][len(RESULT_PREFIX):])
    return {**entry, **result}


def known_unavailable(config: BenchConfig) -> str | None:
    """Why ``config`` cannot run, when that is known without starting a worker (a peer library not installed)."""
    if config.mode in PEER_MODES and importlib.util.find_spec(config.mode) is None:
        return f"{config.mode} is not installed ({INSTALL_HINT})"
    return None


def run_configs(
    configs: list[BenchConfig],
    timeout_s: float | None = None,
    progress: bool = True,
    rounds: int = 1,
    measure: Callable[[BenchConfig, float | None], dict] = run_in_subprocess,
    on_progress: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Measure every configuration, ``rounds`` times over, alternating the order (forward, backward, ...) so that a
    slow drift in what else runs on the machine spreads over all modes instead of landing on whichever ran first.
    Memory is taken from a configuration's first round (``peak_bytes_rounds`` lists every round's); the step times of
    all rounds are pooled (``step_times_s``, with their phases and CPU times) and ``step_time_s`` is their median. ``on_progress`` receives the result
    so far after every measurement (a long run can be written out as it goes)."""
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    plan = [c for r in range(rounds) for c in (configs if r % 2 == 0 else configs[::-1])]
    measured: dict[BenchConfig, dict] = {}
    failed: dict[BenchConfig, dict] = {}
    bar = progress_bar(plan, desc="bench", unit="run", disable=not progress)
    for config in bar:
        if config in failed:
            continue
        bar.set_postfix_str(
            f"{config.model} {config.label} d={config.depth} {config.clips}x{config.frames}x{config.img_size}²"
        )
        reason = known_unavailable(config)
        entry = {**json.loads(config.to_json()), "label": config.label}
        if reason is not None:
            record = {**entry, "status": "unavailable", "reason": reason}
        else:
            record = {**entry, **measure(config, timeout_s)}
        if record.get("status") != "ok":
            failed[config] = record
            measured.pop(config, None)
            bar.write(f"  {config.label} ({config.model}, depth {config.depth}): {record['status']}: {record['reason']}")
        elif config not in measured:
            measured[config] = {**record, "rounds": 1, "peak_bytes_rounds": [record["peak_bytes"]]}
        else:
            pooled = measured[config]
            pooled["rounds"] += 1
            pooled["peak_bytes_rounds"].append(record["peak_bytes"])
            for field in ("step_times_s", "step_phases_s", "step_cpu_times_s"):
                pooled[field] = pooled.get(field, []) + record.get(field, [])
        if on_progress is not None:
            on_progress(_collect(configs, measured, failed))
    return _collect(configs, measured, failed)


def _collect(configs: list[BenchConfig], measured: dict, failed: dict) -> RunResult:
    result = RunResult()
    for config in configs:
        if config in failed:
            result.skipped.append(failed[config])
        elif config in measured:
            record = dict(measured[config])
            record["step_time_s"] = statistics.median(record["step_times_s"])
            record["step_time_min_s"] = min(record["step_times_s"])
            if record.get("step_cpu_times_s"):
                record["step_cpu_time_s"] = statistics.median(record["step_cpu_times_s"])
            result.records.append(record)
    add_ratios(result.records)
    return result


def _shape_key(record: dict) -> tuple:
    # records written before clips existed are one-clip runs
    clips = (record.get("clips", 1), record.get("clip_batch", 1))
    return (*(record.get(k) for k in ("model", "depth", "frames", "img_size", "batch", "device")), *clips)


def add_ratios(records: Iterable[dict]) -> None:
    """Add ``<quantity>_vs_<reference>`` fields (e.g. ``saved_vs_conventional``) to every record that has a record
    of the reference mode at the same model, depth, clip size, batch, clips and device; ``None`` where there is none (or the
    reference value is zero or missing)."""
    records = list(records)
    by_key = {(_shape_key(r), record_label(r)): r for r in records}
    for record in records:
        for reference in REFERENCE_MODES:
            ref = by_key.get((_shape_key(record), reference))
            for quantity, prefix in RATIO_FIELDS.items():
                value = record.get(quantity)
                base = None if ref is None else ref.get(quantity)
                record[f"{prefix}_vs_{reference}"] = value / base if value is not None and base else None


def machine_info(device: str) -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _total_memory(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "revtal_source": source_commit(),
    }
    for package in ("timm", "revlib", "memcnn"):
        info[f"{package}_version"] = _version(package)
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_json(path: str, machine: dict, result: RunResult, **extra) -> None:
    with open(path, "w") as handle:
        json.dump({"machine": machine, "records": result.records, "skipped": result.skipped, **extra}, handle, indent=1)


def merge_json(paths: list[str]) -> tuple[dict, RunResult]:
    """Several runs' JSON files as one result (ratios recomputed over all records). A configuration measured in more
    than one file keeps its last measurement. The machine is the first file's, with every file's listed under
    ``machines``."""
    machines, merged = [], {}
    skipped: list[dict] = []
    for path in paths:
        try:
            with open(path) as handle:
                data = json.load(handle)
            machines.append(data["machine"])
            records = data["records"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a revtal bench JSON file ({type(err).__name__}: {err})") from err
        for record in records:
            merged[(_shape_key(record), record_label(record))] = record
        skipped.extend(data.get("skipped", []))
    result = RunResult(records=list(merged.values()), skipped=skipped)
    add_ratios(result.records)
    return {**machines[0], "machines": machines}, result
