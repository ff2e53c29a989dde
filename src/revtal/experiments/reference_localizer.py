"""``revtal bench localizer``: revtal's ActionFormer head against the reference ActionFormer on the same features.

Three independently generated synthetic feature sets (:data:`FEATURE_SETS`, :func:`generate_feature_set`: videos of
``--dim``-dimensional features; the sets differ in generator seed, video lengths, action density and durations and
class count; the last two classes share 60 % of their pattern) are written once; then, per set and seed, revtal's
head-only training (:class:`revtal.engine.trainer.Trainer` with ``data.features_dir``) and — where the optional
``actionformer`` package is installed (``pip install revtal[reference]``; it builds with ``pip install
--no-build-isolation actionformer==1.5.0``) — the reference's model, optimiser, scheduler, EMA and post-processing,
driven by a plain training loop here, train on the same training split with the same settings (ActionFormer's
THUMOS-14 recipe at width 128: AdamW, weight decay 0.05, batch 2, linear warmup then cosine, gradient clip 1,
EMA 0.999, random crops of 90–100 %, centre sampling 1.5, Gaussian soft-NMS σ 0.5 with voting 0.7), shortened by
default to 12 + 3 epochs at a 4e-4 peak rate on 60 videos so that 3 seeds × 2 implementations fit a CPU. Both
prediction files are scored by revtal's ActivityNet mAP at tIoU 0.3:0.1:0.7, for the final weights and for the EMA
weights (what each recipe evaluates). ``--set key=value`` changes revtal's recipe only (ablations).

Nothing here copies the reference: it is imported and called. ``--implementations vsgn`` also trains revtal's VSGN
(:data:`VSGN_OPTIONS`) with the same recipe. Every run writes ``OUT/runs/<set>_<impl>_seed<k>.json`` (an interrupted
benchmark reads finished runs instead of repeating them); the tables (mean ± sample std over seeds, and paired
per-seed differences with 95 % intervals) go to stdout and ``--json``.
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
from revtal.experiments.study.statistics import PairedDifference
from revtal.utils.io import atomic_write

IMPLEMENTATIONS = ("revtal", "reference", "vsgn")

# Independently generated feature sets (issue 28: parity on data the localizer was not tuned on). Each differs in the
# generator seed, video lengths, action density and durations, and the class count; ``videos``, ``dim`` and
# ``signal`` apply to all, ``data_seed`` shifts every generator seed.
FEATURE_SETS: dict[str, dict] = {
    "A": dict(seed=101, lengths=(128, 512), actions=(1, 6), durations=(4, 96), classes=5),
    "B": dict(seed=202, lengths=(64, 256), actions=(3, 10), durations=(3, 48), classes=8),
    "C": dict(seed=303, lengths=(256, 576), actions=(1, 3), durations=(8, 160), classes=3),
}
# VSGN's options in the comparison (the same width as the ActionFormer: 128): strides 2-32 and anchors of 2 and 5
# strides cover the sets' 3-160-step actions; stitching windows of 576 steps (the reference's max_seq_len)
VSGN_OPTIONS = "{hidden_dim: 128, num_levels: 5, stem_stride: 1, anchor_scales: [2.0, 5.0], head_num_layers: 2, stitch_window: 576}"
WIDTH = 128
# the reference's max_seq_len must be a multiple of stride × window at every level: 32 × 18 = 576 covers 512 steps
REFERENCE_MAX_SEQ_LEN = 576


# ------------------------------------------------------------------------------------------- the feature set

def generate_feature_set(root: str | os.PathLike, videos: int = 60, dim: int = 64, classes: int = 5,
                         lengths: tuple[int, int] = (128, 512), shared: float = 0.6, signal: float = 3.0,
                         seed: int = 0, actions: tuple[int, int] = (1, 6),
                         durations: tuple[int, int] = (4, 96)) -> Path:
    """Write synthetic features and ground truth under ``root``; returns ``root``.

    Feature ``t`` of a video (one per second; position ``t`` covers ``[t, t + 1)`` s) is standard Gaussian noise
    plus, inside an action of class ``c`` at relative position φ ∈ [0, 1], ``a·((1 - φ)·start_c + φ·end_c)`` with
    unit-norm class patterns and a per-instance amplitude ``a`` ∈ [0.6, 1.4] × ``signal``: the class lives in
    the direction and the boundaries in how it drifts. The last two classes share the first ``shared`` of their
    pattern channels. Videos hold ``actions`` (default 1–6) non-overlapping actions of ``durations`` (default 4–96)
    steps, log-uniform. Writes ``features/ID.npy``
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
        wanted = int(rng.integers(actions[0], actions[1] + 1))
        for _ in range(50 * wanted):
            if len(segments) == wanted:
                break
            size = min(int(np.exp(rng.uniform(np.log(durations[0]), np.log(durations[1])))), length - 2)
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

def revtal_overrides(root: Path, out: Path, seed: int, epochs: int, warmup_epochs: int, lr: float,
                     localizer: str = "actionformer") -> list[str]:
    """revtal's recipe of the parity benchmark, as ``--set`` assignments (the THUMOS recipe at width 128)."""
    total = epochs + warmup_epochs
    options = VSGN_OPTIONS if localizer == "vsgn" else f"{{embed_dim: {WIDTH}, head_dim: {WIDTH}}}"
    return [
        f"data.annotations={root / 'annotations.json'}", f"data.features_dir={root / 'features'}",
        "data.train_subset=training", "data.val_subset=validation", "data.batch_size=2", "backbone.mode=frozen",
        f"localizer.name={localizer}", f"localizer.options={options}",
        f"optim.epochs={total}", f"optim.warmup_epochs={warmup_epochs}", f"optim.head_lr={lr}",
        "optim.weight_decay=0.05", "optim.clip_grad=1.0", "optim.ema=true", "optim.ema_decay=0.999",
        f"eval.every={total}", f"eval.tiou={[round(float(t), 2) for t in THUMOS_TIOU]}", f"train.seed={seed}", f"train.out_dir={out}",
        "train.device=cpu",
    ]


def _score(annotations, predictions) -> dict:

    return evaluate_detection(annotations, {"results": predictions}, THUMOS_TIOU, subset="validation").to_json()


def run_revtal(root: Path, out: Path, seed: int, epochs: int, warmup_epochs: int, lr: float, overrides=(),
               localizer: str = "actionformer") -> dict:
    config = load_config(None, [*revtal_overrides(root, out, seed, epochs, warmup_epochs, lr, localizer), *overrides])
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
    """Per feature set, implementation and weights: mAP per tIoU and average, mean ± std over seeds; then the
    paired differences (revtal − reference, vsgn − revtal) and the runs."""
    lines = ["| set | implementation | weights | seeds | " + " | ".join(f"mAP@{t:.1f}" for t in THUMOS_TIOU) + " | avg mAP |",
             "| --- | --- | --- | --- |" + " --- |" * (len(THUMOS_TIOU) + 1)]
    order = {name: i for i, name in enumerate(IMPLEMENTATIONS)}
    for feature_set in sorted({r.get("set", "") for r in records}):
        names = sorted({r["implementation"] for r in records if r.get("set", "") == feature_set}, key=lambda n: order.get(n, 9))
        for name in names:
            runs = [r for r in records if r["implementation"] == name and r.get("set", "") == feature_set]
            for weights in ("final", "ema"):
                per_tiou = [_mean_std([r[weights]["mAP"][i] for r in runs]) for i in range(len(THUMOS_TIOU))]
                average = _mean_std([r[weights]["average_mAP"] for r in runs])
                seeds = ",".join(str(r["seed"]) for r in runs)
                lines.append(f"| {feature_set} | {name} | {weights} | {seeds} | " + " | ".join(per_tiou) + f" | {average} |")
    paired = paired_differences(records)
    if paired:
        lines += ["", "| set | difference (final weights) | seeds | per seed | mean [95 % CI] | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in paired:
            ci = row["ci95"]
            interval = f"{100 * row['mean']:+.2f}" + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")
            per_seed = " / ".join(f"{100 * d:+.2f}" for d in row["per_seed"])
            lines.append(f"| {row['set']} | {row['entry']} − {row['baseline']} | {','.join(map(str, row['seeds']))} "
                         f"| {per_seed} | {interval} | {row['verdict']} |")
    lines += ["", "| set | implementation | seed | parameters | avg mAP final | avg mAP EMA | train s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r.get('set', '')} | {r['implementation']} | {r['seed']} | {r['parameters']:,} | "
                     f"{100 * r['final']['average_mAP']:.2f} | {100 * r['ema']['average_mAP']:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


PAIRS = (("revtal", "reference"), ("vsgn", "revtal"))


def paired_differences(records: list[dict]) -> list[dict]:
    """Per feature set, (entry − baseline) average mAP of the final weights over the seeds both ran: per seed,
    mean, and the 95 % interval of the mean (Student's t; runs of one seed share the data)."""
    rows = []
    for feature_set in sorted({r.get("set", "") for r in records}):
        for entry, baseline in PAIRS:
            mine = {r["seed"]: r["final"]["average_mAP"] for r in records
                    if r["implementation"] == entry and r.get("set", "") == feature_set}
            theirs = {r["seed"]: r["final"]["average_mAP"] for r in records
                      if r["implementation"] == baseline and r.get("set", "") == feature_set}
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                continue
            diffs = np.array([mine[s] - theirs[s] for s in seeds])
            summary = PairedDifference(float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else None, len(diffs))
            rows.append({"set": feature_set, "entry": entry, "baseline": baseline, "seeds": seeds,
                         "per_seed": diffs.tolist(), **summary.to_dict()})
    return rows


def compare(out: str | Path, *, seeds=(0, 1, 2), videos: int = 60, dim: int = 64, data_seed: int = 0,
            epochs: int = 12, warmup_epochs: int = 3, lr: float = 4e-4, signal: float = 3.0,
            implementations=("revtal", "reference"), feature_sets=tuple(FEATURE_SETS), overrides=(), tag: str = "",
            json_path: str | None = None, settings: dict | None = None) -> int:
    """Train each implementation for each seed on each feature set under ``out``, print the tables and
    (``json_path``) write them with the machine and ``settings`` (the command line's options). A run whose result
    file exists (an interrupted benchmark) is read instead of trained again."""
    out = Path(out)
    implementations = list(implementations)
    if "reference" in implementations and not reference_available():
        print("note: the reference (pip package actionformer) is not installed: training revtal only. "
              "Install it with: pip install --no-build-isolation 'revtal[reference]'", flush=True)
        implementations.remove("reference")
    machine = machine_info("cpu")
    print(f"revtal bench localizer: feature sets {' '.join(feature_sets)}, {videos} videos each, "
          f"{epochs}+{warmup_epochs} epochs, lr {lr:g}, signal {signal:g}, seeds {list(seeds)}, "
          f"{', '.join(implementations)}; {machine['cpu_model']} ({machine['cpu_cores_available']} cores, "
          f"{torch.get_num_threads()} torch threads), load {machine['load_average_at_start']}", flush=True)
    tag = f"_{tag}" if tag else ""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    records = []
    for feature_set in feature_sets:
        spec = dict(FEATURE_SETS[feature_set])
        spec["seed"] += data_seed
        root = out / f"features_{feature_set}_v{videos}_d{dim}_x{signal:g}_s{data_seed}"
        if not (root / "reference.json").exists():
            print(f"writing feature set {feature_set} to {root}", flush=True)
            generate_feature_set(root, videos=videos, dim=dim, signal=signal, **spec)
        for seed in seeds:
            for name in implementations:
                path = out / "runs" / f"{feature_set}_{name}{tag}_seed{seed}.json"
                if path.exists():
                    print(f"  {feature_set} {name} seed {seed}: read {path}", flush=True)
                    records.append(json.loads(path.read_text()))
                    continue
                started = time.perf_counter()
                print(f"set {feature_set}: training {name} seed {seed} ...", flush=True)
                if name == "reference":
                    record = run_reference(root, seed, epochs, warmup_epochs, lr, classes=spec["classes"], dim=dim)
                else:
                    record = run_revtal(root, out / f"train_{feature_set}_{name}{tag}_seed{seed}", seed, epochs,
                                        warmup_epochs, lr, overrides if name == "revtal" else (),
                                        "vsgn" if name == "vsgn" else "actionformer")
                record.update(set=feature_set, implementation=name, seed=seed,
                              overrides=list(overrides) if name == "revtal" else [])
                text = json.dumps(record, indent=2)
                atomic_write(path, lambda fh: fh.write(text), binary=False)
                print(f"  {feature_set} {name} seed {seed}: average mAP {100 * record['final']['average_mAP']:.2f} "
                      f"(final weights), {100 * record['ema']['average_mAP']:.2f} (EMA), "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
                records.append(record)
    print(tables(records))
    if json_path:
        machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        Path(json_path).write_text(json.dumps({"machine": machine, "settings": settings or {}, "records": records,
                                               "paired": paired_differences(records)}, indent=2, default=str))
        print(f"wrote {json_path}")
    return 0
