"""``revtal bench localizer``: revtal's ActionFormer head against the reference ActionFormer on the same features.

One synthetic feature set (:func:`generate_feature_set`: videos of ``--dim``-dimensional features, 128–512 steps
each, 5 action classes, the last two sharing 60 % of their pattern) is written once; then, per seed, revtal's
head-only training (:class:`revtal.engine.trainer.Trainer` with ``data.features_dir``) and — where the optional
``actionformer`` package is installed (``pip install revtal[reference]``; it builds with ``pip install
--no-build-isolation actionformer==1.5.0``) — the reference's model, optimiser, scheduler, EMA and post-processing,
driven by a plain training loop here, train on the same training split with the same settings (ActionFormer's
THUMOS-14 recipe at width 128: AdamW, weight decay 0.05, batch 2, linear warmup then cosine, gradient clip 1,
EMA 0.999, random crops of 90–100 %, centre sampling 1.5, Gaussian soft-NMS σ 0.5 with voting 0.7), shortened by
default to 12 + 3 epochs at a 4e-4 peak rate on 60 videos so that 3 seeds × 2 implementations fit a CPU. Both
prediction files are scored by revtal's ActivityNet mAP at tIoU 0.3:0.1:0.7, for the final weights and for the EMA
weights (what each recipe evaluates). ``--set key=value`` changes revtal's recipe only (ablations).

Nothing here copies the reference: it is imported and called. Every run writes ``OUT/runs/<impl>_seed<k>.json``;
the tables (mean ± sample std over seeds) go to stdout and ``--json``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from revtal.bench.runner import machine_info
from revtal.data.annotations import AnnotationSet, VideoAnnotation, load_annotations, save_annotations
from revtal.engine.config import load_config
from revtal.engine.inference import Predictor
from revtal.engine.trainer import Trainer
from revtal.evaluation.detection import THUMOS_TIOU, evaluate_detection

IMPLEMENTATIONS = ("revtal", "reference")
WIDTH = 128
# the reference's max_seq_len must be a multiple of stride × window at every level: 32 × 18 = 576 covers 512 steps
REFERENCE_MAX_SEQ_LEN = 576


# ------------------------------------------------------------------------------------------- the feature set

def generate_feature_set(root: str | os.PathLike, videos: int = 60, dim: int = 64, classes: int = 5,
                         lengths: tuple[int, int] = (128, 512), shared: float = 0.6, signal: float = 3.0,
                         seed: int = 0) -> Path:
    """Write synthetic features and ground truth under ``root``; returns ``root``.

    Feature ``t`` of a video (one per second; position ``t`` covers ``[t, t + 1)`` s) is standard Gaussian noise
    plus, inside an action of class ``c`` at relative position φ ∈ [0, 1], ``a·((1 - φ)·start_c + φ·end_c)`` with
    unit-norm class patterns and a per-instance amplitude ``a`` ∈ [0.6, 1.4] × ``signal``: the class lives in
    the direction and the boundaries in how it drifts. The last two classes share the first ``shared`` of their
    pattern channels. Videos hold 1–6 non-overlapping actions of 4–96 steps (log-uniform). Writes ``features/ID.npy``
    (C, T) and ``annotations.json`` for revtal, ``reference/ID.npy`` (T, C) and ``reference.json`` for ActionFormer.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((classes, 2, dim))
    common = int(round(shared * dim))
    patterns[-1, :, :common] = patterns[-2, :, :common]
    patterns /= np.linalg.norm(patterns, axis=-1, keepdims=True)
    names = [f"action_{c}" for c in range(classes)]
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "reference").mkdir(parents=True, exist_ok=True)
    annotations, database = {}, {}
    train_count = int(round(videos * 2 / 3))
    for index in range(videos):
        vid = f"video_{index:04d}"
        subset = "training" if index < train_count else "validation"
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        features = rng.standard_normal((length, dim))
        segments, labels = [], []
        occupied = np.zeros(length, dtype=bool)
        wanted = int(rng.integers(1, 7))
        for _ in range(50 * wanted):
            if len(segments) == wanted:
                break
            size = min(int(np.exp(rng.uniform(np.log(4), np.log(96)))), length - 2)
            start = int(rng.integers(0, length - size + 1))
            if occupied[max(0, start - 1): start + size + 1].any():
                continue
            occupied[start: start + size] = True
            label = int(rng.integers(classes)) if index >= classes else index  # every class in the training split
            phase = (np.arange(size) + 0.5)[:, None] / size
            amplitude = signal * rng.uniform(0.6, 1.4)
            features[start: start + size] += amplitude * ((1 - phase) * patterns[label, 0] + phase * patterns[label, 1])
            segments.append([float(start), float(start + size)])
            labels.append(label)
        order = np.argsort([s for s, _ in segments])
        segments, labels = [segments[i] for i in order], [labels[i] for i in order]
        features = features.astype(np.float32)
        np.save(root / "features" / f"{vid}.npy", np.ascontiguousarray(features.T))
        np.save(root / "reference" / f"{vid}.npy", features)
        annotations[vid] = VideoAnnotation(vid, subset, float(length), np.array(segments), np.array(labels), fps=1.0)
        database[vid] = {"subset": subset, "duration": float(length), "fps": 1.0, "annotations": [
            {"label": names[c], "label_id": c, "segment": s} for s, c in zip(segments, labels)]}
    save_annotations(root / "annotations.json", AnnotationSet(classes=names, videos=annotations))
    (root / "reference.json").write_text(json.dumps({"database": database}))
    return root


# ------------------------------------------------------------------------------------------------ revtal

def revtal_overrides(root: Path, out: Path, seed: int, epochs: int, warmup_epochs: int, lr: float) -> list[str]:
    """revtal's recipe of the parity benchmark, as ``--set`` assignments (the THUMOS recipe at width 128)."""
    total = epochs + warmup_epochs
    return [
        f"data.annotations={root / 'annotations.json'}", f"data.features_dir={root / 'features'}",
        "data.train_subset=training", "data.val_subset=validation", "data.batch_size=2", "backbone.mode=frozen",
        f"localizer.options={{embed_dim: {WIDTH}, head_dim: {WIDTH}}}",
        f"optim.epochs={total}", f"optim.warmup_epochs={warmup_epochs}", f"optim.head_lr={lr}",
        "optim.weight_decay=0.05", "optim.clip_grad=1.0", "optim.ema=true", "optim.ema_decay=0.999",
        f"eval.every={total}", f"eval.tiou={[round(float(t), 2) for t in THUMOS_TIOU]}", f"train.seed={seed}", f"train.out_dir={out}",
        "train.device=cpu",
    ]


def _score(annotations, predictions) -> dict:

    return evaluate_detection(annotations, {"results": predictions}, THUMOS_TIOU, subset="validation").to_json()


def run_revtal(root: Path, out: Path, seed: int, epochs: int, warmup_epochs: int, lr: float, overrides=()) -> dict:

    config = load_config(None, [*revtal_overrides(root, out, seed, epochs, warmup_epochs, lr), *overrides])
    start = time.perf_counter()
    trainer = Trainer(config, progress=False, overwrite=True)  # a benchmark re-measures from scratch
    trainer.fit()
    seconds = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in trainer.model.localizer.parameters()),
        "final": _score(trainer.annotations, _predict(trainer, trainer.model)),
        "ema": _score(trainer.annotations, _predict(trainer, trainer.evaluation_model())),
        "train_seconds": seconds,
        **_without_voting(trainer),
    }


def _predict(trainer, model, config=None) -> dict:

    return Predictor(model, config or trainer.config, trainer.classes, trainer.device).predict(trainer.val_set)


def _without_voting(trainer) -> dict:
    """The final weights scored again without segment voting (the reference votes only when class-agnostic)."""
    if trainer.config.localizer.postprocess.voting_threshold is None:
        return {}
    config = trainer.config.with_values({"localizer.postprocess.voting_threshold": None})
    return {"final_no_voting": _score(trainer.annotations, _predict(trainer, trainer.model, config))}


# --------------------------------------------------------------------------------------------- reference

def reference_available() -> bool:
    try:
        import actionformer  # noqa: F401
    except ImportError:
        return False
    return True


def reference_config(root: Path, classes: int, dim: int, epochs: int, warmup_epochs: int, lr: float) -> dict:
    """The reference's configuration: its defaults with the THUMOS-14 recipe's values at width 128."""
    # the reference is an optional package (the reference extra): imported only when it runs
    from actionformer.core.config import DEFAULTS, _merge, _update_config

    recipe = {
        "dataset_name": "thumos", "train_split": ["training"], "val_split": ["validation"],
        "model_name": "LocPointTransformer",
        "dataset": {"json_file": str(root / "reference.json"), "feat_folder": str(root / "reference"),
                    "file_prefix": None, "file_ext": ".npy", "num_classes": classes, "input_dim": dim,
                    "feat_stride": 1, "num_frames": 1, "default_fps": 1.0, "downsample_rate": 1,
                    "max_seq_len": REFERENCE_MAX_SEQ_LEN, "trunc_thresh": 0.5, "crop_ratio": [0.9, 1.0],
                    "force_upsampling": False},
        "loader": {"batch_size": 2, "num_workers": 0},
        "model": {"backbone_type": "convTransformer", "fpn_type": "identity", "backbone_arch": (2, 2, 5),
                  "regression_range": [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)],
                  "n_head": 4, "n_mha_win_size": 19, "embd_dim": WIDTH, "fpn_dim": WIDTH, "head_dim": WIDTH,
                  "use_abs_pe": False},
        "train_cfg": {"init_loss_norm": 100, "clip_grad_l2norm": 1.0, "cls_prior_prob": 0.01,
                      "center_sample": "radius", "center_sample_radius": 1.5, "droppath": 0.1,
                      "label_smoothing": 0.0, "loss_weight": 1.0},
        "test_cfg": {"voting_thresh": 0.7, "pre_nms_topk": 2000, "max_seg_num": 200, "min_score": 0.001,
                     "multiclass_nms": True, "nms_method": "soft", "nms_sigma": 0.5, "iou_threshold": 0.1,
                     "pre_nms_thresh": 0.001, "duration_thresh": 0.05},
        "opt": {"type": "AdamW", "learning_rate": lr, "weight_decay": 0.05, "epochs": epochs,
                "warmup": True, "warmup_epochs": warmup_epochs, "schedule_type": "cosine"},
    }

    _merge(copy.deepcopy(DEFAULTS), recipe)
    return _update_config(recipe)


def run_reference(root: Path, seed: int, epochs: int, warmup_epochs: int, lr: float, classes: int, dim: int) -> dict:
    # the reference is an optional package (the reference extra): imported only when it runs
    from actionformer.datasets import make_dataset
    from actionformer.datasets.data_utils import trivial_batch_collator, worker_init_reset_seed
    from actionformer.modeling import make_meta_arch
    from actionformer.utils import ModelEma, fix_random_seed, make_optimizer, make_scheduler

    cfg = reference_config(root, classes, dim, epochs, warmup_epochs, lr)
    generator = fix_random_seed(seed, include_cuda=False)
    train_set = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    val_set = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg["loader"]["batch_size"], shuffle=True, drop_last=True, num_workers=0,
        collate_fn=trivial_batch_collator, worker_init_fn=worker_init_reset_seed, generator=generator,
    )
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    optimizer = make_optimizer(model, cfg["opt"])
    scheduler = make_scheduler(optimizer, cfg["opt"], len(loader))
    ema = ModelEma(model)
    start = time.perf_counter()
    for _ in range(epochs + warmup_epochs):
        model.train()
        for video_list in loader:
            optimizer.zero_grad(set_to_none=True)
            model(video_list)["final_loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train_cfg"]["clip_grad_l2norm"])
            optimizer.step()
            scheduler.step()
            ema.update(model)
    seconds = time.perf_counter() - start

    annotations = load_annotations(root / "annotations.json")
    names = annotations.classes

    @torch.no_grad()
    def predictions(net) -> dict:
        net = copy.deepcopy(net).eval()
        results = {}
        for index in range(len(val_set)):
            out = net([val_set[index]])[0]
            results[out["video_id"]] = [
                {"label": names[int(c)], "score": float(s), "segment": [float(a), float(b)]}
                for (a, b), s, c in zip(out["segments"].tolist(), out["scores"].tolist(), out["labels"].tolist())
            ]
        return results

    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "final": _score(annotations, predictions(model)),
        "ema": _score(annotations, predictions(ema.module)),
        "train_seconds": seconds,
    }


# ------------------------------------------------------------------------------------------------ tables

def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def tables(records: list[dict]) -> str:
    """Per implementation and weights: mAP per tIoU and average, mean ± std over seeds; then the runs."""
    lines = ["| implementation | weights | seeds | " + " | ".join(f"mAP@{t:.1f}" for t in THUMOS_TIOU) + " | avg mAP |",
             "| --- | --- | --- |" + " --- |" * (len(THUMOS_TIOU) + 1)]
    names = sorted({r["implementation"] for r in records}, key=lambda n: (n != "revtal", n))
    for name in names:
        runs = [r for r in records if r["implementation"] == name]
        for weights in ("final", "ema"):
            per_tiou = [_mean_std([r[weights]["mAP"][i] for r in runs]) for i in range(len(THUMOS_TIOU))]
            average = _mean_std([r[weights]["average_mAP"] for r in runs])
            seeds = ",".join(str(r["seed"]) for r in runs)
            lines.append(f"| {name} | {weights} | {seeds} | " + " | ".join(per_tiou) + f" | {average} |")
    lines += ["", "| implementation | seed | parameters | avg mAP final | avg mAP EMA | train s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['implementation']} | {r['seed']} | {r['parameters']:,} | {100 * r['final']['average_mAP']:.2f} "
                     f"| {100 * r['ema']['average_mAP']:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def compare(out: str | Path, *, seeds=(0, 1, 2), videos: int = 60, dim: int = 64, data_seed: int = 0,
            epochs: int = 12, warmup_epochs: int = 3, lr: float = 4e-4, signal: float = 3.0,
            implementations=IMPLEMENTATIONS, overrides=(), tag: str = "", json_path: str | None = None,
            settings: dict | None = None) -> int:
    """Train each implementation for each seed on one synthetic feature set under ``out``, print the tables and
    (``json_path``) write them with the machine and ``settings`` (the command line's options)."""
    out = Path(out)
    root = out / f"features_v{videos}_d{dim}_x{signal:g}_s{data_seed}"
    if not (root / "reference.json").exists():
        print(f"writing the synthetic feature set to {root}", flush=True)
        generate_feature_set(root, videos=videos, dim=dim, signal=signal, seed=data_seed)
    implementations = list(implementations)
    if "reference" in implementations and not reference_available():
        print("note: the reference (pip package actionformer) is not installed: training revtal only. "
              "Install it with: pip install --no-build-isolation 'revtal[reference]'", flush=True)
        implementations.remove("reference")
    machine = machine_info("cpu")
    print(f"revtal bench localizer: {videos} videos, {epochs}+{warmup_epochs} epochs, lr {lr:g}, "
          f"signal {signal:g}, seeds {seeds}, "
          f"{', '.join(implementations)}; {machine['cpu_model']} ({machine['cpu_cores_available']} cores, "
          f"{torch.get_num_threads()} torch threads), load {machine['load_average_at_start']}", flush=True)
    tag = f"_{tag}" if tag else ""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        for name in implementations:
            started = time.perf_counter()
            print(f"training {name} seed {seed} ...", flush=True)
            if name == "revtal":
                record = run_revtal(root, out / f"train_revtal{tag}_seed{seed}", seed, epochs, warmup_epochs,
                                    lr, overrides)
            else:
                record = run_reference(root, seed, epochs, warmup_epochs, lr, classes=5, dim=dim)
            record.update(implementation=name, seed=seed, overrides=list(overrides) if name == "revtal" else [])
            (out / "runs" / f"{name}{tag}_seed{seed}.json").write_text(json.dumps(record, indent=2))
            print(f"  {name} seed {seed}: average mAP {100 * record['final']['average_mAP']:.2f} (final weights), "
                  f"{100 * record['ema']['average_mAP']:.2f} (EMA), {time.perf_counter() - started:.0f} s", flush=True)
            records.append(record)
    text = tables(records)
    print(text)
    if json_path:
        machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        Path(json_path).write_text(json.dumps({"machine": machine, "settings": settings or {}, "records": records},
                                              indent=2, default=str))
        print(f"wrote {json_path}")
    return 0

