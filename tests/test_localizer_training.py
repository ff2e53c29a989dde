"""End to end on synthetic features: train ActionFormer, detect, map to seconds, score with the official mAP.

Features are Gaussian noise; inside each action every feature also carries its class's direction. Train and
evaluation videos are drawn separately (different actions, lengths and noise), so the score measures learning,
not memorisation. A small configuration of the full architecture (6 levels, THUMOS regression ranges, soft-NMS and
voting) trains in about 10 s on one free core.
"""

from __future__ import annotations

import torch

from revtal.data.annotations import AnnotationSet, VideoAnnotation
from revtal.data.timeline import TemporalGrid
from revtal.evaluation.detection import THUMOS_TIOU, evaluate_detection
from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig
from revtal.localizers.postprocess import detections_to_seconds

IN_CHANNELS, NUM_CLASSES, LENGTH = 16, 3, 64


def synthetic_videos(count: int, generator: torch.Generator, directions: torch.Tensor):
    """Videos of 48..64 features holding back-to-back actions of 4..16 features separated by 2..9 background ones."""
    def randint(low, high):
        return int(torch.randint(low, high, (1,), generator=generator))

    features = torch.randn(count, IN_CHANNELS, LENGTH, generator=generator)
    mask = torch.zeros(count, LENGTH, dtype=torch.bool)
    segments, labels = [], []
    for video in range(count):
        length = randint(48, LENGTH + 1)
        mask[video, :length] = True
        video_segments, video_labels, cursor = [], [], randint(0, 6)
        while True:
            duration = randint(4, 17)
            if cursor + duration > length:
                break
            label = randint(0, NUM_CLASSES)
            features[video, :, cursor : cursor + duration] += directions[label][:, None]
            # features cursor .. cursor+duration-1 each cover ±0.5 around their position
            video_segments.append([cursor - 0.5, cursor + duration - 0.5])
            video_labels.append(label)
            cursor += duration + randint(2, 10)
        segments.append(torch.tensor(video_segments).reshape(-1, 2))
        labels.append(torch.tensor(video_labels, dtype=torch.long))
    return features, mask, segments, labels


def test_actionformer_learns_synthetic_actions():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(NUM_CLASSES, IN_CHANNELS, generator=generator)
    directions = 3.0 * directions / directions.norm(dim=1, keepdim=True)  # signal norm 3 vs noise norm 4 per feature
    train = synthetic_videos(64, generator, directions)
    evaluation = synthetic_videos(24, generator, directions)

    model = ActionFormer(IN_CHANNELS, NUM_CLASSES, ActionFormerConfig(embed_dim=32, head_dim=32, window_size=9))
    epochs, batch = 10, 8
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * (64 // batch), pct_start=0.1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(64)
        for start in range(0, 64, batch):
            index = order[start : start + batch]
            output = model(train[0][index], train[1][index])
            losses = model.loss(output, [train[2][i] for i in index], [train[3][i] for i in index])
            optimizer.zero_grad()
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()

    model.eval()
    with torch.no_grad():
        detections = model.predict(model(evaluation[0], evaluation[1]))
    grid = TemporalGrid(step_s=0.5, offset_s=0.25)  # e.g. 16-frame snippets every 8 frames at 16 fps
    classes = ["jump", "run", "throw"]
    results, videos = {}, {}
    for index, video_detections in enumerate(detections):
        video_id = f"video_{index}"
        duration = float(grid.to_seconds(int(evaluation[1][index].sum()) - 0.5))
        in_seconds = detections_to_seconds(video_detections, grid, duration)
        results[video_id] = [
            {"label": classes[int(label)], "score": float(score), "segment": segment.tolist()}
            for segment, score, label in zip(in_seconds["segments"], in_seconds["scores"], in_seconds["labels"])
        ]
        videos[video_id] = VideoAnnotation(video_id, "validation", duration, grid.to_seconds(evaluation[2][index].numpy()),
                                           evaluation[3][index].numpy())
    ground_truth = AnnotationSet(classes=classes, videos=videos)
    result = evaluate_detection(ground_truth, {"results": results}, THUMOS_TIOU)
    assert sum(len(v.segments) for v in videos.values()) >= 40  # enough instances for the score to mean something
    assert result.average_mAP >= 0.9, result.format_table()
    assert result.mAP[0] >= result.mAP[-1]  # looser thresholds never score lower
