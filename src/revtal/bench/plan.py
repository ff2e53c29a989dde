"""Paper-scale memory on a CPU: a training step's peak of live tensor bytes, run on fake tensors.

:class:`LiveBytes` is a ``TorchDispatchMode`` that adds up the bytes of every live tensor storage: each storage is
counted once, when the first tensor on it appears (views and in-place results share their base's storage, so they
add nothing), and subtracted when the storage itself is freed (a weak-reference finaliser on the storage object,
which torch keeps alive exactly as long as the storage). It works on real tensors (the CPU reference) and on fake
tensors (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and storages without data), where a whole
training step of a 512-frame video model runs in seconds.

:func:`simulate_steps` runs N training steps — forward and loss, backward, optimizer step — under the meter and
returns the peak, the phase it falls in, and what was live at that moment split into parameters, gradients,
optimizer state and activations plus temporaries. The meter also logs every allocation and free, so a model of
CUDA's caching allocator (:func:`cuda_reserved`) can replay the step.

What is counted: tensor storages the step's ops create (and the ones registered with :meth:`LiveBytes.track`:
parameters, buffers, inputs). What is not: memory a kernel allocates internally without a tensor, the CUDA
context, library workspaces (cuBLAS, cuDNN), and the allocator's rounding and caching, which
:func:`cuda_reserved` models separately.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from revtal.bench.cuda_emulation import CudaAutocast, NormStatistics
from revtal.bench.runner import machine_info
from revtal.data.cliplists import read_classes
from revtal.data.mixup import MixupCutmix, soft_target_cross_entropy
from revtal.engine.classification import build_classifier, mixing_generator
from revtal.engine.config import config_from_dict, load_config
from revtal.engine.model import build_model
from revtal.engine.modes import get_mode, mode_names
from revtal.engine.optim import recipe_optimizer
from revtal.localizers.losses import diou_loss_1d, sigmoid_focal_loss
from revtal.reversible import reversible_stages
from revtal.utils.progress import progress as progress_bar

CATEGORIES = ("params", "grads", "optimizer", "activations")
PHASES = ("setup", "forward", "backward", "optimizer")


@dataclass
class _Storage:
    token: int
    nbytes: int
    category: str = "activations"


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages while active (real or fake tensors alike).

    ``current`` and ``peak`` are in bytes; ``peak_phase`` is the value of :attr:`phase` when the peak was reached.
    Storages that existed before the mode (parameters, inputs) are added with :meth:`track`. :meth:`mark` assigns a
    category to storages already live (gradients after backward, optimizer state after the step); the split of the
    peak is computed at the end from the log of allocations, so a category assigned later still applies to the
    bytes live at the peak.
    """

    def __init__(self):
        super().__init__()
        self.phase = "setup"
        self.current = 0
        self.peak = 0
        self.peak_phase = "setup"
        self._peak_event = 0
        self._live: dict[int, _Storage] = {}  # id(storage object) -> record; the object lives as long as the storage
        self._tokens = itertools.count()
        self._records: dict[int, _Storage] = {}  # token -> record, freed ones included
        # (token, nbytes) for an allocation, (token, -1) for a free, in order: the allocator model replays it
        self.events: list[tuple[int, int]] = []
        self._phase_of_event: list[tuple[int, str]] = [(0, "setup")]

    # ----------------------------------------------------------------------------------------------- counting
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.track(t)
        return out

    def track(self, tensor: Tensor, category: str | None = None) -> None:
        """Count ``tensor``'s storage if it is not counted yet (and set its category, if given)."""
        storage = tensor.untyped_storage()
        record = self._live.get(id(storage))
        if record is None:
            record = _Storage(next(self._tokens), int(storage.nbytes()))
            key = id(storage)
            self._live[key] = record
            self._records[record.token] = record
            weakref.finalize(storage, self._free, key)
            self.current += record.nbytes
            self.events.append((record.token, record.nbytes))
            if self.current > self.peak:
                self.peak, self.peak_phase, self._peak_event = self.current, self.phase, len(self.events)
        if category is not None:
            record.category = category

    def _free(self, key: int) -> None:
        record = self._live.pop(key, None)
        if record is not None:
            self.current -= record.nbytes
            self.events.append((record.token, -1))

    def mark(self, tensors: Iterable[Tensor], category: str) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                self.track(t, category)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_of_event.append((len(self.events), phase))

    # ------------------------------------------------------------------------------------------------ results
    def live_at(self, event_index: int) -> list[_Storage]:
        """Records of the storages live after the first ``event_index`` events."""
        alive: dict[int, None] = {}
        for token, size in itertools.islice(self.events, event_index):
            if size >= 0:
                alive[token] = None
            else:
                alive.pop(token, None)
        return [self._records[t] for t in alive]

    def peak_split(self) -> dict[str, int]:
        split = dict.fromkeys(CATEGORIES, 0)
        for record in self.live_at(self._peak_event):
            split[record.category] += record.nbytes
        return split

    def rounded_peak(self, rounding: Callable[[int], int]) -> int:
        """The peak when every storage takes ``rounding(nbytes)`` (CUDA: :func:`cuda_block_size`)."""
        sizes: dict[int, int] = {}
        current = peak = 0
        for token, size in self.events:
            if size >= 0:
                sizes[token] = rounding(size)
                current += sizes[token]
                peak = max(peak, current)
            else:
                current -= sizes.pop(token)
        return peak


# ------------------------------------------------------------------------------------------------ CUDA allocator
# The model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, documented in the CUDA
# semantics notes, "Memory management"), with its default settings (no max_split_size, no expandable segments,
# one stream): a request is rounded up to a multiple of 512 bytes (kMinBlockSize); requests up to 1 MiB (kSmallSize)
# come from the small pool, whose segments are 2 MiB (kSmallBuffer); larger ones from the large pool, whose new
# segments are 20 MiB (kLargeBuffer) for requests under 10 MiB (kMinLargeAlloc) and the request rounded up to 2 MiB
# (kRoundLarge) otherwise. A request takes the smallest cached free block of its pool that is large enough (best
# fit); the rest of the block is split off when it is at least 512 bytes (small pool) or more than 1 MiB (large
# pool). A freed block merges with free neighbours of its segment and stays cached: segments are returned to the
# driver only by empty_cache() or when an allocation fails, so "reserved" is the largest total of segments.
MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def cuda_block_size(nbytes: int) -> int:
    """Bytes the allocator hands out (and ``torch.cuda.memory_allocated`` counts) for a request of ``nbytes``."""
    if nbytes <= 0:
        return 0
    return MIN_BLOCK * -(-nbytes // MIN_BLOCK)


def _segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


class _Pool:
    def __init__(self, small: bool):
        self.small = small
        self.free: list[tuple[int, int, int]] = []  # sorted (size, segment, offset)
        self.blocks: dict[tuple[int, int], tuple[int, bool]] = {}  # (segment, offset) -> (size, free)
        self.free_ending: dict[tuple[int, int], int] = {}  # (segment, end) of a free block -> its offset

    def add_free(self, segment: int, offset: int, size: int) -> None:
        bisect.insort(self.free, (size, segment, offset))
        self.blocks[(segment, offset)] = (size, True)
        self.free_ending[(segment, offset + size)] = offset

    def take_free(self, segment: int, offset: int, size: int) -> None:
        self.free.pop(bisect.bisect_left(self.free, (size, segment, offset)))
        del self.blocks[(segment, offset)]
        del self.free_ending[(segment, offset + size)]


def cuda_reserved(events: Iterable[tuple[int, int]]) -> int:
    """The peak of CUDA memory *reserved* (segments held by the caching allocator) when the allocations and frees
    in ``events`` (:attr:`LiveBytes.events`) run on an empty allocator; see the model above."""
    pools = {True: _Pool(True), False: _Pool(False)}
    where: dict[int, tuple[bool, int, int]] = {}  # token -> (small, segment, offset)
    segments = itertools.count()
    reserved = peak = 0
    for token, nbytes in events:
        if nbytes >= 0:
            size = cuda_block_size(nbytes)
            if size == 0:
                continue
            small = size <= SMALL_SIZE
            pool = pools[small]
            i = bisect.bisect_left(pool.free, (size, -1, -1))
            if i < len(pool.free):
                block_size, segment, offset = pool.free[i]
                pool.take_free(segment, offset, block_size)
            else:
                block_size, segment, offset = _segment_size(size), next(segments), 0
                reserved += block_size
                peak = max(peak, reserved)
            remaining = block_size - size
            if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
                pool.add_free(segment, offset + size, remaining)
                block_size = size
            pool.blocks[(segment, offset)] = (block_size, False)
            where[token] = (small, segment, offset)
        elif token in where:
            small, segment, offset = where.pop(token)
            pool = pools[small]
            size, _ = pool.blocks.pop((segment, offset))
            # merge with the free block after and the free block before within the segment
            after = pool.blocks.get((segment, offset + size))
            if after is not None and after[1]:
                pool.take_free(segment, offset + size, after[0])
                size += after[0]
            before = pool.free_ending.get((segment, offset))
            if before is not None:
                before_size = offset - before
                pool.take_free(segment, before, before_size)
                offset, size = before, size + before_size
            pool.add_free(segment, offset, size)
    return peak


# ------------------------------------------------------------------------------------------------- training steps
@dataclass
class StepPlan:
    """The peak of live tensor bytes over the simulated training steps and what was live then."""

    peak_bytes: int
    phase: str  # the phase of the peak: forward, backward or optimizer
    step: int  # the step (from 1) the peak falls in
    split: dict[str, int] = field(default_factory=dict)  # params / grads / optimizer / activations at the peak
    cuda_allocated_bytes: int = 0  # the peak with CUDA's 512-byte rounding of every block
    reserved_bytes: int = 0  # modelled CUDA reserved peak (caching allocator)
    steps: int = 1
    # per exact stage, the widths of x_n's low bits and y_n its last forward stored (ExactStorage.stream_bits):
    # measured on real tensors, the stated worst case on fake ones
    exact_stream_bits: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes, "phase": self.phase, "step": self.step,
            "params_bytes": self.split.get("params", 0), "grads_bytes": self.split.get("grads", 0),
            "optimizer_bytes": self.split.get("optimizer", 0), "activation_bytes": self.split.get("activations", 0),
            "cuda_allocated_bytes": self.cuda_allocated_bytes, "reserved_bytes": self.reserved_bytes,
            "steps": self.steps, "exact_stream_bits": [list(b) for b in self.exact_stream_bits],
        }


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)]


def simulate_steps(model: nn.Module, optimizer: torch.optim.Optimizer | None, step_loss: Callable[[], Tensor],
                   steps: int = 2, meter: LiveBytes | None = None,
                   before_step: Callable[[int], None] | None = None,
                   after_backward: Callable[[], None] | None = None,
                   backward: Callable[[Tensor], None] | None = None,
                   optimizer_step: Callable[[], None] | None = None,
                   progress: Callable[[], None] | None = None) -> StepPlan:
    """Run ``steps`` training steps of ``model`` and return their peak of live tensor bytes.

    Each step: ``step_loss()`` (forward and loss; it makes its own inputs), ``backward(loss)`` (default
    ``loss.backward()``), ``optimizer_step()`` (default ``optimizer.step()``) and ``optimizer.zero_grad(
    set_to_none=True)``, the trainer's order. Works on real and on fake tensors: the caller enters the
    ``FakeTensorMode`` (the one the model was built under) around this call. Two steps are the default because the
    optimizer state appears in the first and is resident from the second on.
    """
    meter = meter or LiveBytes()
    for p in model.parameters():
        meter.track(p, "params")
    for b in model.buffers():
        meter.track(b, "params")
    peak_step = 1
    with meter:
        for step in range(1, steps + 1):
            before = meter.peak
            if before_step is not None:
                before_step(step)
            meter.set_phase("forward")
            loss = step_loss()
            meter.set_phase("backward")
            (backward or (lambda l: l.backward()))(loss)
            del loss
            meter.mark((p.grad for p in model.parameters() if p.grad is not None), "grads")
            if after_backward is not None:
                after_backward()
            meter.set_phase("optimizer")
            if optimizer is not None:
                (optimizer_step or optimizer.step)()
                meter.mark(optimizer_state_tensors(optimizer), "optimizer")
                optimizer.zero_grad(set_to_none=True)
            if meter.peak > before:
                peak_step = step
            meter.set_phase("setup")
            if progress is not None:
                progress()
    return StepPlan(peak_bytes=meter.peak, phase=meter.peak_phase, step=peak_step, split=meter.peak_split(),
                    cuda_allocated_bytes=meter.rounded_peak(cuda_block_size), reserved_bytes=cuda_reserved(meter.events),
                    steps=steps)


# ------------------------------------------------------------------------------------------------ whole recipes
# plan mode -> the config values that put the recipe in it (engine mode names plan the recipe's own backprop)
PLAN_MODES: dict[str, dict[str, str]] = {
    "frozen": {"backbone.mode": "frozen"},
    "conventional": {"backbone.mode": "conventional"},
    "checkpoint": {"backbone.mode": "checkpoint"},
    "re2": {"backbone.mode": "re2"},
    "hard": {"backbone.mode": "hard"},
    "dr2net:reversible": {"backbone.mode": "dr2net", "backbone.backprop": "reversible"},
    "dr2net:exact": {"backbone.mode": "dr2net", "backbone.backprop": "exact"},
    "scratch": {"backbone.mode": "scratch"},
    "losa": {"backbone.mode": "losa"},
    "unipt": {"backbone.mode": "unipt"},
    "st_adapter": {"backbone.mode": "st_adapter"},
    "aim": {"backbone.mode": "aim"},
}
MODE_ALIASES = {"dr2net_float": "dr2net:reversible", "dr2net_exact": "dr2net:exact"}  # revtal bench's older names
DEFAULT_CLASSES = 200  # ActivityNet's, the largest of the papers' datasets: the classifier head's size is not read


def _mode_values(mode: str) -> dict[str, str]:
    """The config values of plan mode ``mode``; an unknown name is a ValueError listing the modes."""
    mode = MODE_ALIASES.get(mode, mode)
    if mode in PLAN_MODES:
        return PLAN_MODES[mode]
    if mode in mode_names():
        return {"backbone.mode": mode}
    raise ValueError(f"unknown plan mode {mode!r}; modes: {', '.join(dict.fromkeys([*PLAN_MODES, *mode_names()]))}")


def recipe_classes(config) -> int:
    """The classes of the recipe's head, read without data where the recipe states them: a classification recipe's
    synthetic clips (``classification.synthetic.classes``) or its class list file (``classification.classes``);
    a TAL recipe's localizer is sized :data:`DEFAULT_CLASSES` (its classes come from the annotations). A
    classification recipe whose classes are only in clip lists that are not here needs them given (``--classes``)."""
    if config.task != "classification":
        return DEFAULT_CLASSES
    c = config.classification
    if not c.train_list:
        return c.synthetic.classes
    if c.classes and Path(c.classes).is_file():
        return len(read_classes(c.classes))
    raise ValueError(f"the classes of this recipe come from classification.train_list={c.train_list!r}"
                     + (f" or classification.classes={c.classes!r}" if c.classes else "")
                     + ", which revtal plan does not read: give --classes N")


def mode_config(config, mode: str):
    """``config`` put in plan mode ``mode`` (a key of :data:`PLAN_MODES` or any registered training mode)."""
    return config.with_values(_mode_values(mode), source=f"plan mode {MODE_ALIASES.get(mode, mode)}")


def mode_not_applicable(config, mode: str, classes: int = DEFAULT_CLASSES) -> str | None:
    """Why plan mode ``mode`` does not apply to ``config``, or None when it does: the recipe in that mode must pass
    the config checks and its model must build on the meta device (seconds, no simulation), which is where a mode
    refuses a backbone it has no form for (the in-block adapters of ``st_adapter`` and ``aim`` need a video ViT).
    An unknown mode name raises ValueError instead: it is a typo, not a property of the recipe."""
    _mode_values(mode)
    try:
        with torch.device("meta"):
            build_recipe_model(mode_config(config, mode), classes, meta=True)
    except ValueError as err:  # ConfigError included
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    return None


def _materialize(model: nn.Module, device: str = "cpu") -> None:
    """Replace every meta parameter and buffer of ``model`` by an empty tensor of the same shape, dtype and strides
    on ``device``, created under the caller's mode (a FakeTensorMode: fake tensors). Tied parameters stay tied."""
    made: dict[int, Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is None or not t.is_meta:
                    continue
                if id(t) not in made:
                    new = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
                    if isinstance(t, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=t.requires_grad)
                    made[id(t)] = new
                table[name] = made[id(t)]


def build_recipe_model(config, classes: int, fake_mode=None, meta: bool = False) -> nn.Module:
    """The recipe's model: for TAL the backbone in its mode and the localizer, for classification the backbone in
    its mode and the classifier head (the classification trainer's :func:`~revtal.engine.classification.
    build_classifier`). With ``fake_mode`` it is built on the meta device
    (no weight file is read: ``backbone.pretrained`` is ignored) and its tensors become fake CPU tensors of that
    mode; ``meta``: left on the meta device (the caller's ``torch.device("meta")``); without either, it is built
    for real with random weights (the CPU reference of the validation tests)."""
    config = config.with_values({"backbone.pretrained": ""}, source="plan (no weight files)")
    build = build_classifier if config.task == "classification" else build_model
    if fake_mode is None or meta:
        return build(config, classes)
    with torch.device("meta"):
        model = build(config, classes)
    with fake_mode:
        _materialize(model)
    return model


def recipe_inputs(config) -> tuple[Tensor, Tensor]:
    """A training batch of ``config``'s shape: the video (B, 3, T, H, W) float32 and its frame mask (B, T); in
    snippets mode the longest training item, ``max_seq_len`` clips (else ``num_frames / clip_stride``) of
    ``clip_frames`` frames, (B, n, 3, clip_frames, H, W) and (B, n)."""
    data = config.data
    if data.mode == "snippets":
        clips = data.max_seq_len or max(1, data.num_frames // data.clip_stride)
        video = torch.zeros(data.batch_size, clips, 3, data.clip_frames, data.img_size, data.img_size)
        return video, torch.ones(data.batch_size, clips, dtype=torch.bool)
    video = torch.zeros(data.batch_size, 3, data.num_frames, data.img_size, data.img_size)
    return video, torch.ones(data.batch_size, data.num_frames, dtype=torch.bool)


def dense_loss(localizer, output) -> Tensor:
    """The localizer's losses (sigmoid focal + DIoU) on every position of the pyramid.

    The training loss selects positive positions by value (``assign_labels``), which tensors without values cannot
    do; on every position the same functions run on a superset of them, so its tensors are at least as large
    (they are (B, P, classes) and (B, P, 2): kilobytes to a few MiB beside a backbone's gigabytes)."""
    cfg = localizer.config
    logits = torch.cat(output.cls_logits, dim=1)
    offsets = torch.cat(output.offsets, dim=1)
    cls_loss = sigmoid_focal_loss(logits, torch.zeros_like(logits), cfg.focal_alpha, cfg.focal_gamma, reduction="sum")
    reg_loss = diou_loss_1d(offsets.reshape(-1, 2).float(), torch.ones_like(offsets).reshape(-1, 2).float(),
                            reduction="sum")
    return (cls_loss + reg_loss) / localizer.loss_normalizer


def plan_recipe(config, mode: str, steps: int = 2, classes: int = DEFAULT_CLASSES, fake: bool = True,
                rules: str = "cuda", progress: Callable[[], None] | None = None,
                exact_stream_bits: list | None = None, device: str = "cpu") -> StepPlan:
    """The peak of live tensor bytes of ``steps`` training steps of ``config`` in plan mode ``mode``.

    The step is the trainer's: the mode's hooks before the forward (coefficient schedule, first-step verification
    of exact stages, the float-reconstruction monitor) and after the backward, the forward and loss under the
    recipe's autocast, backward, gradient clipping, AdamW over the backbone and head groups, ``zero_grad``. A TAL
    recipe (``task: tal``) trains its localizer on the backbone's features (:func:`dense_loss`); a classification
    recipe (``task: classification``) its clip classifier, on the batch the classification trainer feeds it
    (:func:`classification_step`).
    ``fake=False`` runs the same on real tensors of ``device`` (random weights): on the CPU, the reference a
    simulation must equal; on CUDA (``scripts/gpu_check.sh``), the step whose ``torch.cuda.max_memory_allocated``
    the CUDA-rules simulation predicts.

    ``exact_stream_bits``: the widths each exact stage of a simulation stores for its output streams (as a real
    run reported them in :attr:`StepPlan.exact_stream_bits`) instead of the stated worst case.

    ``rules="cuda"`` (fake tensors only) runs the step as a GPU would (:mod:`revtal.bench.cuda_emulation`: CUDA's
    autocast lists and attention kernels); ``rules="cpu"`` runs it as the CPU does (the validation against real CPU
    steps). Either way AdamW and gradient clipping run in their multi-tensor ``foreach`` form, torch's default for
    CUDA tensors.
    """
    if rules not in ("cuda", "cpu"):
        raise ValueError(f"rules must be 'cuda' or 'cpu', got {rules!r}")
    if fake and device != "cpu":
        raise ValueError("a simulation runs on fake CPU tensors: device must be 'cpu'")
    emulate_cuda = fake and rules == "cuda"
    config = mode_config(config, mode)
    fake_mode = FakeTensorMode() if fake else None
    torch.manual_seed(config.train.seed)
    model = build_recipe_model(config, classes, fake_mode)
    if not fake:
        model.to(device)
    exact_stages = [s for s in reversible_stages(model) if s.backprop == "exact"]
    for stage, bits in zip(exact_stages, exact_stream_bits or []):
        stage.exact_arithmetic.simulated_low_bits = tuple(bits)
    training_mode = get_mode(config.backbone.mode)
    hooks = training_mode.hooks(model, config.backbone, iters_per_epoch=1)
    ocfg = config.optim
    scope = fake_mode if fake_mode is not None else torch.enable_grad()
    # the fake kernels' normalisation statistics in the real kernels' dtype (CUDA's or the CPU's)
    statistics = NormStatistics("cuda" if emulate_cuda else "cpu") if fake else contextlib.nullcontext()
    with scope, statistics, (CudaAutocast() if emulate_cuda else contextlib.nullcontext()):
        model.train()
        # the multi-tensor (foreach) AdamW and clipping: torch's default for CUDA tensors, on both sides
        head = model.head if config.task == "classification" else model.localizer
        optimizer = recipe_optimizer(model.trainable_backbone(), head, ocfg, foreach=True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        step_index = [0]  # the trainer's optimizer step counter (the classification batch's mixup draws)

        def before_step(step: int) -> None:
            step_index[0] = step - 1
            hooks.before_step(0, step - 1, step - 1)

        def step_loss() -> Tensor:
            if config.task == "classification":
                return classification_step(model, config, classes, step_index[0], device, fake_mode)
            video, mask = (t.to(device) for t in recipe_inputs(config))
            with _autocast(ocfg.amp, torch.device(device).type):
                output = model(video, mask)
                return dense_loss(model.localizer, output)

        def optimizer_step() -> None:
            if ocfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, ocfg.clip_grad, foreach=True)
            optimizer.step()

        result = simulate_steps(
            model, optimizer, step_loss, steps=steps, before_step=before_step,
            after_backward=hooks.after_backward, optimizer_step=optimizer_step, progress=progress)
    stored = [s.exact_arithmetic.last_storage for s in exact_stages]
    result.exact_stream_bits = [tuple(s.stream_bits) for s in stored if s is not None]
    return result


def classification_step(model: nn.Module, config, classes: int, step: int, device: str = "cpu",
                        fake_mode: FakeTensorMode | None = None) -> Tensor:
    """The classification trainer's forward and loss on a batch of ``config``'s shape (``data.batch_size`` clips of
    ``data.num_frames`` × ``img_size``²): its mixup/cutmix with label smoothing, drawn for optimizer step ``step``
    as the trainer draws them (:func:`~revtal.engine.classification.mixing_generator`), the model under the
    recipe's autocast and the soft-target cross entropy outside it. The draws are host values: on fake tensors
    they (and the labels, B integers) are made as real tensors, so the simulation mixes exactly as the real step
    does (mixup or cutmix, and the same box)."""
    d, c = config.data, config.classification
    mixup = MixupCutmix(classes, c.mixup_alpha, c.cutmix_alpha, c.mixup_prob, c.mixup_switch_prob, c.label_smoothing)
    video = torch.zeros(d.batch_size, 3, d.num_frames, d.img_size, d.img_size, device=device)
    with unset_fake_temporarily() if fake_mode is not None else contextlib.nullcontext():
        labels = torch.zeros(d.batch_size, dtype=torch.long, device=device)
        video, targets, _ = mixup(video, labels, mixing_generator(config.train.seed, step))
    # on fake tensors the loss takes a fake copy of the real targets; the real ones stay alive (and counted) until
    # the loss is made, as the targets of a real step do
    real_targets = targets
    if fake_mode is not None:
        targets = fake_mode.from_tensor(real_targets)
    with _autocast(config.optim.amp, torch.device(device).type):
        logits = model(video)
    loss = soft_target_cross_entropy(logits, targets)
    del real_targets
    return loss


def _autocast(amp: str, device_type: str = "cpu"):
    if amp == "none":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# the GPU check: recipes scaled to fit one GPU, and the modes each is checked in
GPU_CHECK_RECIPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "tiny_cpu_dr2net": ("configs/tiny_cpu_dr2net.yaml", (), ("conventional", "dr2net:exact")),
    "anet_swin3d_t_64f": ("configs/anet_swin3d_t_dr2net.yaml", ("data.batch_size=1", "data.num_frames=64"),
                          ("conventional", "checkpoint", "re2", "dr2net:exact")),
    "thumos_losa_64f": ("configs/thumos_losa.yaml", ("data.batch_size=1", "data.num_frames=64"),
                        ("frozen", "conventional", "losa")),
}


def cuda_check(recipes: Iterable[str] = tuple(GPU_CHECK_RECIPES), steps: int = 2, classes: int = DEFAULT_CLASSES,
               root: str = ".") -> list[dict]:
    """For each recipe and mode: the plan (fake tensors, CUDA rules) beside ``torch.cuda.max_memory_allocated``
    and ``max_memory_reserved`` of the same steps run on the GPU (needs CUDA)."""
    records = []
    for name in recipes:
        path, overrides, modes = GPU_CHECK_RECIPES[name]
        config = load_config(Path(root) / path, list(overrides))
        for mode in modes:
            planned = plan_recipe(config, mode, steps=steps, classes=classes)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            measured = plan_recipe(config, mode, steps=steps, classes=classes, fake=False, device="cuda")
            allocated = torch.cuda.max_memory_allocated() - base
            reserved = torch.cuda.max_memory_reserved()
            records.append({
                "recipe": name, "mode": mode, "plan_peak_bytes": planned.peak_bytes,
                "plan_cuda_allocated_bytes": planned.cuda_allocated_bytes, "plan_reserved_bytes": planned.reserved_bytes,
                "cuda_max_allocated_bytes": allocated, "cuda_max_reserved_bytes": reserved,
                "meter_peak_bytes_on_cuda": measured.peak_bytes,
                "allocated_ratio": planned.cuda_allocated_bytes / allocated if allocated else None,
                "reserved_ratio": planned.reserved_bytes / reserved if reserved else None,
            })
    return records


# ------------------------------------------------------------------------------------------------- the report
GiB = 1 << 30
# What a GPU holds besides the tensors: the CUDA context (torch with lazy module loading: ~0.3–0.5 GiB on recent
# drivers) and the libraries' workspaces (cuBLAS: 4 MiB × 8 per handle with CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN
# convolution workspaces chosen per call). A stated allowance, not a measurement.
CONTEXT_BYTES = GiB // 2
WORKSPACE_BYTES = GiB // 4
DEFAULT_GPUS = (11.0, 24.0, 40.0, 80.0)


def fits(reserved_bytes: int, gpu_gib: float) -> bool:
    """Whether a step whose modelled reserved peak is ``reserved_bytes`` fits a GPU of ``gpu_gib`` GiB with the
    stated margin (context + workspaces). The caching allocator frees its cache and retries before failing, so a
    step whose *allocated* peak fits may still run when its reserved one does not; this is the safe side."""
    return reserved_bytes + CONTEXT_BYTES + WORKSPACE_BYTES <= gpu_gib * GiB


def _gpu_key(gib: float) -> str:
    return f"{gib:g}"


def check_plan_arguments(steps: int, gpus: Iterable[float]) -> None:
    if not 1 <= steps <= 10:
        raise ValueError(f"--steps must be in [1, 10], got {steps}")
    for gib in gpus:
        if not 0 < gib <= 4096:
            raise ValueError(f"--gpu-gib sizes must be in (0, 4096] GiB, got {gib:g}")


def _plan_mode(config_dict: dict, mode: str, steps: int, classes: int) -> dict:
    """One mode's record (run in a worker process by :func:`plan`)."""
    torch.set_num_threads(1)  # fake tensors compute nothing: one thread per worker
    config = config_from_dict(config_dict, source="revtal plan")
    try:
        result = plan_recipe(config, mode, steps=steps, classes=classes)
    except (RuntimeError, TypeError, AssertionError, NotImplementedError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"mode {mode}: the model cannot be simulated: {type(err).__name__}: {message}") from None
    return {"mode": MODE_ALIASES.get(mode, mode), **result.to_dict()}


def plan(config, modes: Iterable[str] | None = None, steps: int = 2, gpus: Iterable[float] = DEFAULT_GPUS,
         classes: int | None = None, jobs: int = 1, progress: bool = False) -> dict:
    """``revtal plan``: each mode's simulated GPU step of ``config`` as a record (see :class:`StepPlan`), with the
    GPU sizes it fits; ``jobs`` modes at a time in worker processes; ``classes`` of the head (None: the recipe's,
    :func:`recipe_classes`).

    Every mode is checked against the recipe before anything is simulated (:func:`mode_not_applicable`). Modes
    asked for by name (``modes``) must apply: one that does not raises ValueError naming it and the reason. With the
    default list (``modes=None``: every plan mode) the ones that do not apply are skipped, each as a record
    ``{"mode", "skipped": reason}`` in its place; if none applies, that is an error. A mode whose model then
    cannot be simulated raises ValueError naming the mode."""
    explicit = modes is not None
    modes, gpus = list(modes if explicit else PLAN_MODES), [float(g) for g in gpus]
    check_plan_arguments(steps, gpus)
    classes = recipe_classes(config) if classes is None else classes
    if classes < 1:
        raise ValueError(f"--classes must be at least 1, got {classes}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    skipped: dict[str, str] = {}
    with progress_bar(modes, desc="revtal plan: checking modes", unit="mode", disable=not progress,
                      leave=False) as checking:
        for mode in checking:
            reason = mode_not_applicable(config, mode, classes)
            if reason is not None and explicit:
                raise ValueError(f"mode {mode} does not apply to this recipe: {reason}")
            if reason is not None:
                skipped[mode] = reason
    if len(skipped) == len(modes):
        mode, reason = next(iter(skipped.items()))
        raise ValueError(f"no plan mode applies to this recipe (mode {mode}: {reason})")
    planned = [mode for mode in modes if mode not in skipped]
    args = [(config.to_dict(), mode, steps, classes) for mode in planned]
    with progress_bar(total=len(planned), desc="revtal plan", unit="mode", disable=not progress, leave=False) as bar:
        if jobs == 1:
            done = []
            for a in args:
                bar.set_postfix_str(a[1])
                done.append(_plan_mode(*a))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch state in the workers
            with concurrent.futures.ProcessPoolExecutor(min(jobs, len(planned)), mp_context=context) as pool:
                futures = [pool.submit(_plan_mode, *a) for a in args]
                for _ in concurrent.futures.as_completed(futures):
                    bar.update()
                done = [f.result() for f in futures]
    for record in done:
        record["fits"] = {_gpu_key(g): fits(record["reserved_bytes"], g) for g in gpus}
    by_mode = dict(zip(planned, done))
    records = [by_mode[mode] if mode in by_mode else {"mode": MODE_ALIASES.get(mode, mode), "skipped": skipped[mode]}
               for mode in modes]
    return {
        "records": records,
        "steps": steps,
        "gpu_gib": [_gpu_key(g) for g in gpus],
        "margin_bytes": {"cuda_context": CONTEXT_BYTES, "workspaces": WORKSPACE_BYTES},
        "rules": "cuda",
        "classes": classes,
        "machine": machine_info("cpu (fake tensors; the figures are a GPU's)"),
        "config": config.to_dict(),
    }


def plan_table(result: dict) -> str:
    """The records as a text table (GiB, or MiB when every peak is below 1 GiB); a skipped mode is a row saying why
    it does not apply."""
    planned = [r for r in result["records"] if "skipped" not in r]
    gpus = result.get("gpu_gib") or (list(planned[0]["fits"]) if planned else [])
    small = all(r["peak_bytes"] < GiB for r in planned)
    unit, scale = ("MiB", 1 << 20) if small else ("GiB", GiB)
    head = ["mode", "peak", "params", "grads", "optim", "activ.", "phase", "reserved", *[f"{g} GiB" for g in gpus]]
    rows, notes = [head], {}
    for r in result["records"]:
        if "skipped" in r:
            notes[len(rows)] = (r["mode"], f"not applicable: {r['skipped']}")
            rows.append(None)
            continue
        rows.append([r["mode"], *(f"{r[k] / scale:.2f}" for k in ("peak_bytes", "params_bytes", "grads_bytes",
                                                                "optimizer_bytes", "activation_bytes")),
                     r["phase"], f"{r['reserved_bytes'] / scale:.2f}",
                     *("fits" if r["fits"][g] else "-" for g in gpus)])
    widths = [max(len(row[i]) for row in rows if row is not None) for i in range(len(head))]
    lines = [f"{notes[i][0].ljust(widths[0])}  {notes[i][1]}" if row is None else
             "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
             for i, row in enumerate(rows)]
    margin = result["margin_bytes"]
    lines.append(f"{unit}; peak = allocated tensors at the step's peak (params + grads + optimizer state + activations "
                 f"and temporaries); reserved = modelled CUDA caching allocator; fits = reserved + "
                 f"{(margin['cuda_context'] + margin['workspaces']) / GiB:.2f} GiB (CUDA context, workspaces) <= GPU")
    return "\n".join(lines)
