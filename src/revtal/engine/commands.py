"""``revtal train | eval | extract | detect``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _config_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML recipe (default: the built-in tiny CPU recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=3 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (train.out_dir)")


def _load(args):
    from revtal.engine.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"train.out_dir={args.out}")
    return load_config(args.config, overrides)


class train:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--resume", default=None, help="continue from a checkpoint (e.g. OUT/last.pt)")

    @staticmethod
    def run(args) -> int:
        from revtal.engine import distributed
        from revtal.engine.trainer import Trainer

        trainer = Trainer(_load(args), resume=args.resume)
        history = trainer.fit()
        if distributed.is_main() and history and history[-1].metrics:
            print(f"final average mAP: {100 * history[-1].metrics['average_mAP']:.2f}  ({trainer.out_dir})")
        distributed.cleanup()
        return 0


def _restore(trainer, checkpoint: str) -> None:
    from revtal.engine.checkpoint import apply_trained_coefficients, load_checkpoint

    state = load_checkpoint(checkpoint)
    trainer.model.load_state_dict(state["model"])
    if trainer.ema is not None and state.get("ema"):
        trainer.ema.load_state_dict(state["ema"])
    trainer.hooks.load_state_dict(state["mode"])
    apply_trained_coefficients(trainer.model, state)


class evaluate:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--checkpoint", required=True)

    @staticmethod
    def run(args) -> int:
        from revtal.engine.trainer import Trainer

        trainer = Trainer(_load(args))
        _restore(trainer, args.checkpoint)
        metrics = trainer.evaluate()
        for t, m in zip(metrics["tiou"], metrics["mAP"]):
            print(f"tIoU {t:.2f}: mAP {100 * m:.2f}")
        print(f"average mAP {100 * metrics['average_mAP']:.2f}")
        return 0


class extract:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--features", required=True, help="directory for <video_id>.npy features (C, T')")

    @staticmethod
    def run(args) -> int:
        from tqdm import tqdm

        from revtal.engine.trainer import Trainer

        config = _load(args)
        trainer = Trainer(config)
        out = Path(args.features)
        out.mkdir(parents=True, exist_ok=True)
        model = trainer.model.eval()
        count = 0
        for dataset in (trainer.train_set, trainer.val_set):
            loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=_collate())
            for batch in tqdm(loader, desc="extract"):
                with torch.no_grad():
                    feats = model.extractor(batch["video"].to(trainer.device))[0]
                np.save(out / f"{batch['video_id'][0]}.npy", feats.float().cpu().numpy())
                count += 1
        print(f"wrote {count} feature files to {out}")
        return 0


def _collate():
    from revtal.data.dataset import collate_tal

    return collate_tal


class detect:
    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("videos", nargs="+", help="video files")
        parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
        parser.add_argument("--out", required=True, help="output directory for <video>.json and <video>.png")
        parser.add_argument("--gt", default=None, help="ActivityNet-format annotations to overlay (optional)")
        parser.add_argument("--min-score", type=float, default=0.2, help="score threshold of the plot")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.inference import Detector

        detector = Detector.from_checkpoint(args.checkpoint)
        ground_truth = None
        if args.gt:
            from revtal.data.annotations import load_annotations

            ground_truth = load_annotations(args.gt)
        out = Path(args.out)
        for path in args.videos:
            result = detector.detect_file(path)
            video_id = Path(path).stem
            (out / f"{video_id}.json").parent.mkdir(parents=True, exist_ok=True)
            (out / f"{video_id}.json").write_text(json.dumps(result, indent=1))
            detector.plot(result, out / f"{video_id}.png", ground_truth, min_score=args.min_score)
            print(f"{path}: {len(result['detections'])} detections → {out / (video_id + '.json')}")
        return 0
