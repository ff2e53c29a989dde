"""One benchmark configuration, measured inside its own process: ``python -m revtal.bench.worker CONFIG_JSON``.

The input is a random video of ``clips × frames`` frames per sample; with more than one clip it runs through the
backbone clip by clip as in end-to-end TAL (:class:`revtal.bench.clips.ClipChunks`, ``clip_batch`` clips per call).

A fresh process per configuration keeps the measurements of one mode free of what another left behind (allocator
caches, pages the C library never returned). For memory runs the parent (:mod:`revtal.bench.runner`) starts it with
``MALLOC_MMAP_THRESHOLD_=65536``, so every allocation of 64 KiB or more is its own mapping, returned to the system
when freed: the resident set then follows the tensors that are alive. Each such allocation costs fresh page
faults, so speed runs (``allocator`` "default") keep the C library's own allocator, as a user's process does;
they report no process peak (the allocator keeps freed memory mapped, so the mark would read far too low).

Measured, in this order:

1. **bytes saved for backward** during the first training forward
   (:class:`revtal.utils.memory.SavedTensorMeter`; parameters, buffers and the input clip are not counted: they are
   resident whatever the mode). That first step, and ``warmup - 1`` more, also allocate gradients, optimizer state,
   thread pools and lazily initialised kernels;
2. **process peak**: the resident set just before the next step is the baseline (parameters, optimizer state); the
   kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) after that step's forward and
   backward, minus the baseline, is what they need: activations, temporaries and the parameter gradients, which
   are freed between steps (``zero_grad(set_to_none=True)``, as revtal's trainer does). The optimizer update is left
   out of the peak (its temporaries scale with the parameters, not with the activations). The breakdown: the
   forward's own peak (``forward_peak_bytes``), what is resident when backward starts (``after_forward_bytes``:
   saved activations and the graph) and backward's peak (``backward_peak_bytes``, the mark reset in between);
   ``param_grad_bytes`` is the size of the trainable parameters' gradients, which backward must build in full;
3. **CUDA** (on a GPU): ``torch.cuda.max_memory_allocated`` over the same stretch, absolute (parameters, gradients
   and optimizer state included, as papers report GPU memory) and above the baseline;
4. **step time**: forward + backward + optimizer step, each of ``repeats`` steps timed (the first is the one
   measured above); the median is reported. Each step's three phases are recorded too (``step_phases_s``: wall
   seconds of forward, backward, optimizer step), and its CPU time (``step_cpu_times_s``, this process's user +
   system seconds): on a shared machine a step's wall time includes the time other processes held the core, its
   CPU time much less so.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback

import torch

from revtal.bench.clips import ClipChunks
from revtal.bench.configs import ADAPTER_MODES, RESULT_PREFIX, BenchConfig
from revtal.bench.targets import ModeUnavailable, build_target, exact_storage
from revtal.bench.peers import PeerUnavailable
from revtal.utils.memory import SavedTensorMeter

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class PeakRss:
    """Peak resident set of this process over a stretch of code, above the resident set at its start."""

    def __init__(self) -> None:
        self.baseline = 0
        self.method = ""

    def start(self) -> None:
        gc.collect()
        resettable = True
        try:
            with open(_CLEAR_REFS, "w") as handle:
                handle.write("5")  # "5": reset the peak-RSS high-water mark (Linux ≥ 4.0)
        except OSError:
            resettable = False
        rss = _status_bytes("VmRSS")
        if resettable and rss is not None:
            self.method = "VmHWM after clear_refs reset"
            self.baseline = rss
        else:
            # no resettable high-water mark: ru_maxrss counts from process start, so construction may hide the step
            self.method = "ru_maxrss since process start (not resettable here)"
            self.baseline = rss if rss is not None else _maxrss_bytes()

    def split(self) -> dict:
        """End of a first phase (the forward): its peak, and the resident set now (what the second phase inherits);
        the high-water mark restarts from here, the baseline stays. Without a resettable mark the forward's peak is
        not separable and both entries are None."""
        if not self.method.startswith("VmHWM"):
            return {"forward_peak_bytes": None, "after_forward_bytes": None}
        forward_peak = self.peak()
        try:
            with open(_CLEAR_REFS, "w") as handle:
                handle.write("5")
        except OSError:
            pass
        rss = _status_bytes("VmRSS")
        return {"forward_peak_bytes": forward_peak, "after_forward_bytes": None if rss is None else rss - self.baseline}

    def peak(self) -> int:
        if self.method.startswith("VmHWM"):
            hwm = _status_bytes("VmHWM")
            if hwm is not None:
                return hwm - self.baseline
        return _maxrss_bytes() - self.baseline


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def measure(config: BenchConfig) -> dict:
    """Measure ``config`` in this process and return its record (see the module docstring)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    built = build_target(config)
    if config.clips > 1 and config.mode not in ADAPTER_MODES:  # adapter methods cut the video into clips themselves
        built.target.features = ClipChunks(built.target.features, config.frames, config.clip_batch)
    target = built.target.to(device).train()
    torch.manual_seed(config.seed + 1)
    length = config.clips * config.frames
    video = torch.randn(config.batch, 3, length, config.img_size, config.img_size, device=device)
    trainable = [p for p in target.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with SavedTensorMeter(target, exclude=[video]) as meter:
        loss = target(video)
    saved = meter.bytes
    loss.backward()
    del loss
    optimizer_step()
    for _ in range(config.warmup - 1):
        target(video).backward()
        optimizer_step()

    rss = PeakRss()
    times: list[float] = []
    phases_of_steps: list[list[float]] = []
    cpu_times: list[float] = []
    peak = cuda_max = cuda_peak = None
    phases: dict = {}
    for index in range(config.repeats):
        measured = index == 0
        if measured:
            sync()
            rss.start()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                cuda_base = torch.cuda.memory_allocated(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = target(video)
        forward_end = time.perf_counter()
        if measured:
            sync()
            phases = rss.split()  # forward's peak; what stays resident into backward; backward's peak follows
        loss.backward()
        del loss
        if measured:
            sync()
            phases["backward_peak_bytes"] = rss.peak()
            peak = max(v for v in (phases["forward_peak_bytes"], phases["backward_peak_bytes"]) if v is not None)
            if cuda:
                cuda_max = torch.cuda.max_memory_allocated(device)
                cuda_peak = cuda_max - cuda_base
        backward_end = time.perf_counter()
        optimizer_step()
        sync()
        end = time.perf_counter()
        times.append(end - start)
        cpu_times.append(time.process_time() - cpu_start)
        phases_of_steps.append([forward_end - start, backward_end - forward_end, end - backward_end])

    if config.allocator != "mmap":
        # the C library keeps freed memory mapped, so the warm-up steps' high-water mark hides in the baseline: a
        # process peak measured here would read far too low (conventional at 16 clips: 152 MiB instead of 1.7 GiB)
        peak = None
        phases = {name: None for name in phases}
    record = json.loads(config.to_json())
    record.update(
        status="ok",
        depth=built.depth,
        saved_bytes=saved,
        peak_bytes=peak,
        baseline_rss_bytes=rss.baseline,
        peak_method=rss.method,
        cuda_max_allocated_bytes=cuda_max,
        cuda_peak_bytes=cuda_peak,
        step_time_s=statistics.median(times),
        step_times_s=times,
        step_phases_s=phases_of_steps,
        step_cpu_times_s=cpu_times,
        **phases,
        param_grad_bytes=sum(p.numel() * p.element_size() for p in trainable),
        trainable_params=sum(p.numel() for p in trainable),
        threads=torch.get_num_threads(),
        malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"),  # read by the C library at process start
        **built.info,
        **exact_storage(target),
    )
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m revtal.bench.worker CONFIG_JSON", file=sys.stderr)
        return 2
    config = BenchConfig.from_json(argv[0])
    try:
        record = measure(config)
        code = 0
    except (ModeUnavailable, PeerUnavailable) as err:
        record, code = {"status": "unavailable", "reason": str(err)}, 0
    except Exception as err:  # reported to the parent, which records it and goes on with the next configuration
        traceback.print_exc()
        record, code = {"status": "error", "reason": f"{type(err).__name__}: {err}"}, 1
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
