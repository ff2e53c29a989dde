"""What one benchmark configuration is, and the grid of them a ``revtal bench`` run measures.

A configuration fixes everything a measurement depends on (backbone, training mode, depth, clip size, batch, device,
warm-up and timed steps), so that it can be sent as JSON to a fresh process (:mod:`revtal.bench.worker`) and
recorded beside its result. This module imports no torch: the parent process only plans and collects.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, fields

# A benchmarked configuration is a training mode (revtal.engine.modes; or a peer library wrapping the conventional
# backbone's blocks) and, for Dr²Net, its memory-free backprop: its label is "mode" or "mode:backprop".
# label: what the mode trains and how it backpropagates
MODE_DESCRIPTIONS: dict[str, str] = {
    "conventional": "unconverted backbone, plain autograd (stores every activation)",
    "frozen": "backbone under no_grad, only the head trains",
    "checkpoint": "original network, each block under torch.utils.checkpoint",
    "re2": "Re²TAL rewiring (α=0, β=1), memory-free float backprop",
    "dr2net:reversible": "Dr²Net at a mid-schedule point, memory-free float backprop",
    "dr2net:exact": "Dr²Net at its start point, memory-free exact (fixed-point) backprop",
    "losa": "LoSA adapters on a frozen backbone",
    "unipt": "UniPT parallel network on a frozen backbone (LoSA Tab. 2)",
    "st_adapter": "ST-Adapters inside a frozen ViT's blocks (LoSA Tab. 2)",
    "aim": "AIM adapters inside a frozen ViT's blocks (LoSA Tab. 2)",
    "revlib": "RevLib ReversibleSequential over the same ViT branches (peer)",
    "memcnn": "MemCNN InvertibleModuleWrapper(AdditiveCoupling) over the same ViT branches (peer)",
}
MODES = tuple(MODE_DESCRIPTIONS)
# the modes measured with a choice of memory-free backprop, and that choice's default (the training config's)
BACKPROP_CHOICES: dict[str, tuple[str, ...]] = {"dr2net": ("exact", "reversible")}
# labels of records written before the benchmark used the training modes' names (old JSON files, old command lines)
EARLIER_LABELS = {"dr2net_float": "dr2net:reversible", "dr2net_exact": "dr2net:exact"}
# a worker's last stdout line: this prefix, then its record as JSON
RESULT_PREFIX = "REVTAL-BENCH-RESULT "
PEER_MODES = ("revlib", "memcnn")
ADAPTER_MODES = ("losa", "unipt", "st_adapter", "aim")  # modes that cut the video into clips themselves

# Dr²Net's float reversible backprop is numerically useless at its start point (1, 0.1): the inverse divides by β at
# every branch. The float mode is therefore benchmarked at a point a schedule passes through; the exact mode, which
# reconstructs bitwise at any β > 0, at the start point itself (β rounded to a dyadic, 13/128 for 0.1).
DR2NET_FLOAT_COEFFICIENTS = (0.5, 0.5)
DR2NET_EXACT_COEFFICIENTS = (1.0, 0.1)


def parse_label(label: str) -> tuple[str, str | None]:
    """``"dr2net:exact"`` → ``("dr2net", "exact")``, ``"re2"`` → ``("re2", None)``; a mode with a backprop choice
    gets its default; earlier labels (``dr2net_float``) are read as the ones they became."""
    label = EARLIER_LABELS.get(label, label)
    mode, _, backprop = label.partition(":")
    if not backprop and mode in BACKPROP_CHOICES:
        backprop = BACKPROP_CHOICES[mode][0]
    return mode, backprop or None


def make_label(mode: str, backprop: str | None) -> str:
    return f"{mode}:{backprop}" if backprop else mode


def record_label(record: dict) -> str:
    """The label of a benchmark record (records written before labels existed: their ``mode``, read as it became)."""
    if record.get("label"):
        return record["label"]
    if record["mode"] in EARLIER_LABELS:
        return EARLIER_LABELS[record["mode"]]
    return make_label(*parse_label(record["mode"])) if record["mode"] in BACKPROP_CHOICES else record["mode"]


def canonical_label(text: str) -> str:
    """A label as given on the command line (``dr2net``, ``dr2net:exact``, or an earlier label) in its full form."""
    return make_label(*parse_label(text))


ALLOCATORS = ("mmap", "default")
INITS = ("library", "finetune")


@dataclass(frozen=True)
class BenchConfig:
    model: str
    mode: str  # a training mode, or a peer (PEER_MODES)
    depth: int | None  # transformer blocks of a ViT; None keeps a model's own depth (non-ViT models)
    frames: int
    img_size: int
    batch: int
    clips: int = 1  # clips of ``frames`` frames per sample: a video of clips·frames frames (see revtal.bench.clips)
    clip_batch: int = 1  # clips per backbone call when clips > 1 (the video runs in chunks of this many clips)
    device: str = "cpu"
    warmup: int = 1
    repeats: int = 1
    threads: int | None = None
    seed: int = 0
    float_coefficients: tuple[float, float] = DR2NET_FLOAT_COEFFICIENTS
    exact_coefficients: tuple[float, float] = DR2NET_EXACT_COEFFICIENTS
    # "mmap": the worker starts with MALLOC_MMAP_THRESHOLD_=65536, so freed memory leaves the resident set (memory
    # runs); "default": the C library's own allocator, as a user's process runs (speed runs: every mmap'd allocation
    # costs page faults, which slowed allocation-heavy modes such as exact arithmetic by up to 1.3x)
    allocator: str = "mmap"
    backprop: str | None = None  # modes of BACKPROP_CHOICES: which memory-free backprop (None: the mode's default)
    window_chunk: int | None = None  # Video Swin: backbone.window_chunk (None: the library's attention and MLP)
    # "library": the library's random init. "finetune": BatchNorm scales the library starts at zero (pytorchvideo's
    # last BatchNorm of every bottleneck) start at one, as in the pretrained weights a finetune begins from. A Re²
    # block (α = 0) outputs that BatchNorm, so a zero scale leaves its branch dead for the benchmark's few steps, and
    # AdamW then takes the square root of zero second moments, several times slower on a CPU than of positive ones
    init: str = "library"

    def __post_init__(self) -> None:
        choices = BACKPROP_CHOICES.get(self.mode, ())
        if choices and self.backprop is None:
            object.__setattr__(self, "backprop", choices[0])
        if self.label not in MODE_DESCRIPTIONS:
            raise ValueError(f"unknown benchmark mode {self.label!r}; modes: {', '.join(MODES)}")
        if self.window_chunk is not None and self.window_chunk < 1:
            raise ValueError(f"benchmark config field 'window_chunk' must be ≥ 1 or None, got {self.window_chunk}")
        for name in ("frames", "img_size", "batch", "clips", "clip_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"benchmark config field {name!r} must be ≥ 1, got {getattr(self, name)}")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"benchmark config field 'depth' must be ≥ 1, got {self.depth}")
        if self.init not in INITS:
            raise ValueError(f"benchmark config field 'init' must be one of {INITS}, got {self.init!r}")
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"benchmark config field 'allocator' must be one of {ALLOCATORS}, got {self.allocator!r}")
        if self.warmup < 1:
            # the first step allocates gradients and optimizer state; it must not be the measured one
            raise ValueError(f"benchmark config field 'warmup' must be ≥ 1, got {self.warmup}")
        if self.repeats < 1:
            raise ValueError(f"benchmark config field 'repeats' must be ≥ 1, got {self.repeats}")

    @property
    def label(self) -> str:
        """``mode`` or ``mode:backprop``: how records and tables name this configuration's mode."""
        return make_label(self.mode, self.backprop)

    @property
    def coefficients(self) -> tuple[float, float]:
        """The (α, β) a Dr²Net configuration is measured at: float backprop's point or exact backprop's."""
        return self.exact_coefficients if self.backprop == "exact" else self.float_coefficients

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BenchConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"benchmark config has unknown fields {unknown}")
        for key in ("float_coefficients", "exact_coefficients"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def is_vit(model: str) -> bool:
    """Video ViTs are the models whose depth is a free option (``depth=`` of the builder)."""
    return model.startswith("vit_")


@dataclass
class Grid:
    models: list[str]
    modes: list[str]  # labels (MODES)
    depths: list[int]
    frames: list[int]
    img_sizes: list[int]
    batches: list[int]
    clips: list[int] = field(default_factory=lambda: [1])
    options: dict = field(default_factory=dict)  # remaining BenchConfig fields, the same for every configuration

    def configs(self) -> tuple[list[BenchConfig], list[str]]:
        """The cross product, models outermost, and notes on what was left out: non-ViT models are measured once at
        their own depth, and the peers (which wrap transformer blocks) only on ViTs."""
        seen: set[BenchConfig] = set()
        out: list[BenchConfig] = []
        notes: list[str] = []
        for model, frames, img, batch, clips, depth, mode in itertools.product(
            self.models, self.frames, self.img_sizes, self.batches, self.clips, self.depths, self.modes
        ):
            if mode in PEER_MODES and not is_vit(model):
                note = f"{mode} skipped for {model}: the peer stacks are built from ViT blocks only"
                if note not in notes:
                    notes.append(note)
                continue
            name, backprop = parse_label(mode)
            config = BenchConfig(
                model, name, depth if is_vit(model) else None, frames, img, batch, clips=clips, backprop=backprop,
                **self.options
            )
            if config not in seen:
                seen.add(config)
                out.append(config)
        return out, notes
