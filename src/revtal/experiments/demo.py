"""The demo (``revtal demo``): the main job, end to end on a dataset it generates itself.

1. write a synthetic untrimmed-video dataset (mp4 + ActivityNet-format JSON);
2. "pretrain" a tiny video ViT conventionally on clip classification of the synthetic actions — this plays the
   role of the pretrained checkpoint people download;
3. convert it to Dr²Net (exact arithmetic) and finetune it end to end for TAL with the dynamic α/β schedule;
4. train the same model conventionally end to end (and head-only on frozen features) for comparison;
5. evaluate (ActivityNet detection mAP at THUMOS thresholds), print a table of mAP, backbone activation memory and
   step time, and write detections and timeline PNGs for validation videos.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from revtal.backbones import ClipClassifier, build
from revtal.data.synthetic import SyntheticClipDataset
from revtal.data.transforms import build_transforms
from revtal.engine.config import Config, config_from_dict
from revtal.engine.datasets import load_dataset_annotations, resolve_dataset
from revtal.engine.inference import Predictor
from revtal.engine.modes import get_mode
from revtal.engine.optim import warmup_cosine
from revtal.engine.run_state import atomic_save
from revtal.engine.trainer import Trainer
from revtal.reversible import reversible_stages

MODES = ("dr2net", "conventional", "frozen")

# The documented multi-seed result that the demo's single seed is read against: the demo's recipe scored on 96
# validation videos over 10 seeds, paired per seed (docs/STUDY.md, "The precise setting"; a test checks that the doc
# still says this). One seed scored on the demo's 16 validation videos moves by several points.
STUDY_RESULT = {"entry": "dr2net", "reference": "conventional", "mean": -0.8, "ci95": (-2.5, 0.9), "seeds": 10,
                "validation_videos": 96, "source": 'docs/STUDY.md, "The precise setting"'}


def demo_config(out: Path, quick: bool = False) -> Config:
    """The demo's recipe (also a good starting point for tiny CPU experiments)."""
    data = {
        "num_frames": 32,
        "img_size": 32,
        "batch_size": 2,
        "cache_mb": 256,
        "synthetic": {"videos": 64, "classes": 4, "seed": 0, "size": 32, "fps": 4.0,
                      "min_duration": 16.0, "max_duration": 32.0},
    }
    epochs = 10
    if quick:  # a smoke run of the whole pipeline in seconds (tests)
        data.update(num_frames=8, img_size=16)
        data["synthetic"].update(videos=6, size=16, fps=2.0, min_duration=6.0, max_duration=8.0)
        epochs = 1
    return config_from_dict({
        "data": data,
        "backbone": {
            "name": "vit_tiny_video",
            "options": {"patch_size": 8, "tubelet_size": 2},
            "mode": "dr2net",
            "backprop": "exact",
            # every 2 iterations, reaching the end point after 60 % of training (Dr²Net: η = 2 iterations)
            "schedule": {"alpha0": 1.0, "alpha_end": 0.3, "beta0": 0.1, "beta_end": 0.7, "every": 2,
                         "unit": "iteration", "end_epoch": max(1.0, 0.6 * epochs)},
        },
        "localizer": {"options": {"embed_dim": 64, "head_dim": 64, "num_heads": 4, "window_size": 5,
                                  "num_branch_blocks": 2, "regression_ranges": [[0, 4], [4, 8], [8, 10000]],
                                  "drop_path": 0.0}},
        "optim": {"epochs": epochs, "backbone_lr": 2e-4, "head_lr": 1e-3, "warmup_epochs": min(1.0, epochs / 4)},
        "eval": {"tiou": [0.3, 0.4, 0.5, 0.6, 0.7], "every": epochs},
        "train": {"out_dir": str(out), "seed": 0, "log_every": 10},
    }, source="revtal demo")


def pretrain_backbone(config: Config, out: Path, steps: int, seed: int = 0) -> dict:
    """Clip classification of the synthetic actions; saves the backbone network's weights to out/backbone.pt."""
    d, s = config.data, config.data.synthetic
    clip_frames = 8
    # frames reach the TAL backbone num_frames / duration apart: show the pretraining clips at that rate
    fps = d.num_frames / (0.5 * (s.min_duration + s.max_duration))
    torch.manual_seed(seed)
    backbone = build(config.backbone.name, num_frames=clip_frames, img_size=d.img_size, **config.backbone.options)
    model = ClipClassifier(backbone, s.classes)
    normalise = build_transforms(False, d.img_size, d.mean, d.std)
    train_set = SyntheticClipDataset(s.classes, clip_frames, d.img_size, length=steps * 16, seed=seed + 101, fps=fps)
    val_set = SyntheticClipDataset(s.classes, clip_frames, d.img_size, length=128, seed=seed + 202, fps=fps)

    def batch_of(dataset, indices):
        clips, labels = zip(*(dataset[i] for i in indices))
        return torch.stack([normalise(c, None) for c in clips]), torch.tensor(labels)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = warmup_cosine(optimizer, warmup_steps=max(1, steps // 10), total_steps=steps)
    model.train()
    bar = tqdm(range(steps), desc="pretrain backbone (clip classification)", leave=False, dynamic_ncols=True)
    for step in bar:
        clips, labels = batch_of(train_set, range(step * 16, step * 16 + 16))
        loss = torch.nn.functional.cross_entropy(model(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(val_set), 32):
            clips, labels = batch_of(val_set, range(start, min(start + 32, len(val_set))))
            correct += int((model(clips).argmax(-1) == labels).sum())
    path = out / "backbone.pt"
    atomic_save(backbone.net.state_dict(), path)
    return {"checkpoint": str(path), "clip_accuracy": correct / len(val_set), "steps": steps}


def run_demo(out: str | Path, pretrain_steps: int = 600, modes: Sequence[str] = MODES, quick: bool = False) -> int:
    """The whole demo into ``out`` (``quick``: a seconds-long smoke run): prints its progress and table, writes
    summary.json, summary.md, each mode's run and the detections."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = demo_config(out, quick=quick)
    modes = [get_mode(m).name for m in modes]  # unknown: an error, now
    print(f"revtal demo → {out}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")

    print("[1/5] synthetic dataset")
    base = resolve_dataset(base, out)
    annotations = load_dataset_annotations(base)
    s = base.data.synthetic
    print(f"      {len(annotations.videos)} videos, {len(annotations.classes)} classes ({', '.join(annotations.classes)})")

    print("[2/5] pretraining the backbone on clip classification")
    pretrain = pretrain_backbone(base, out / "pretrain", steps=10 if quick else pretrain_steps)
    print(f"      clip accuracy {100 * pretrain['clip_accuracy']:.1f}% on held-out clips → {pretrain['checkpoint']}")

    rows = []
    for index, mode in enumerate(modes):
        print(f"[3/5] TAL training, mode {mode} ({index + 1}/{len(modes)})")
        config = base.with_values({"backbone.mode": mode, "backbone.pretrained": pretrain["checkpoint"],
                                   "train.out_dir": str(out / mode)}, source=f"revtal demo ({mode})")
        trainer = Trainer(config, overwrite=True)  # the demo regenerates all of its outputs
        history = trainer.fit()
        last = history[-1]
        rows.append({
            "mode": mode,
            "backprop": backprop_label(trainer.model),
            "average_mAP": last.metrics.get("average_mAP", float("nan")),
            "mAP": last.metrics.get("mAP", []),
            "backbone_saved_bytes": last.backbone_memory_bytes,
            "memory_kind": last.memory_kind,
            "step_time_s": float(np.median([h.step_time_s for h in history])),
            "alpha_beta_end": [last.alpha, last.beta] if last.alpha is not None else None,
            "parameters": trainer.model.parameter_counts(),
        })
        print(f"      average mAP {100 * rows[-1]['average_mAP']:.2f}")

    print("[4/5] results")
    table = format_table(rows)
    print(table)
    print(format_timings(rows))

    print("[5/5] detections and timeline plots")
    detections_dir = out / "detections"
    best_mode = modes[0]
    detector = Predictor.from_checkpoint(out / best_mode / "last.pt")
    val_ids = [v for v, a in annotations.videos.items() if a.subset == "validation"][: (2 if quick else 6)]
    video_dir = Path(base.data.video_dir)
    for video_id in val_ids:
        path = next(video_dir.glob(f"{video_id}.*"))
        result = detector.detect_file(path, duration=annotations.videos[video_id].duration)
        detections_dir.mkdir(parents=True, exist_ok=True)
        (detections_dir / f"{video_id}.json").write_text(json.dumps(result, indent=1))
        detector.plot(result, detections_dir / f"{video_id}.png", annotations)
    print(f"      {len(val_ids)} videos ({best_mode} model) → {detections_dir}/*.json, *.png")

    summary = {
        "dataset": {"videos": s.videos, "classes": s.classes, "size": s.size, "fps": s.fps,
                    "frames_per_video": base.data.num_frames,
                    "validation_videos": len(annotations.subset(base.data.val_subset))},
        "pretrain": pretrain,
        "runs": rows,
        "wall_time_s": time.perf_counter() - started,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_at_end": os.getloadavg()[0],
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(format_summary(table, rows, summary))
    print(f"done in {summary['wall_time_s'] / 60:.1f} min; summary in {out / 'summary.json'}")
    return 0


def backprop_label(model) -> str:
    """How the backbone backpropagates: its reversible stages' arithmetic, autograd, or none (frozen)."""
    if model.frozen_backbone:
        return "none"
    stages = reversible_stages(model.extractor)
    return stages[0].backprop if stages else "autograd"


def format_table(rows: list[dict]) -> str:
    """The results: a fixed seed and thread count give the same table on every run (timings are kept apart)."""
    lines = [
        "| mode | backprop | average mAP (%) | backbone activation memory | learnable parameters |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        memory = f"{r['backbone_saved_bytes'] / 2**20:.2f} MiB ({'saved for backward' if r['memory_kind'] == 'saved_bytes' else 'CUDA peak'})"
        lines.append(
            f"| {r['mode']} | {r['backprop']} | {100 * r['average_mAP']:.2f} | {memory} | {r['parameters']['learnable']:,} |"
        )
    return "\n".join(lines)


def format_timings(rows: list[dict]) -> str:
    """Median step time per mode: these depend on the machine and whatever else runs on it."""
    return "step time (median, ms; varies with the machine's load): " + ", ".join(
        f"{r['mode']} {1000 * r['step_time_s']:.0f}" for r in rows)


def format_summary(table: str, rows: list[dict], summary: dict) -> str:
    m = summary["machine"]
    machine = (f"torch {m['torch']}, {m['threads']} intra-op threads, {m['cpus']} CPUs, OMP_WAIT_POLICY="
               f"{m['omp_wait_policy'] or 'unset'}, load average {m['load_average_at_end']:.1f} at the end"
               + (f", CUDA {m['cuda']}" if m["cuda"] else ""))
    return (f"{table}\n\n{one_seed_caveat(summary['dataset']['validation_videos'])}\n\n{format_timings(rows)}\n\n"
            f"wall time {summary['wall_time_s'] / 60:.1f} min; {machine}; "
            f"pretraining clip accuracy {100 * summary['pretrain']['clip_accuracy']:.1f}%\n")


def one_seed_caveat(validation_videos: int) -> str:
    """What one seed's table can and cannot say, with the documented multi-seed result (:data:`STUDY_RESULT`)."""
    r = STUDY_RESULT
    low, high = r["ci95"]
    return (f"One seed, scored on {validation_videos} validation videos: differences of a few points between modes "
            f"are within the noise of a single seed. The documented result of this recipe over {r['seeds']} seeds on "
            f"{r['validation_videos']} validation videos ({r['source']}): {r['entry']} − {r['reference']} "
            f"{r['mean']:+.1f} points, paired 95 % interval [{low:+.1f}, {high:+.1f}].")
