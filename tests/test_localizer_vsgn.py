"""VSGN: self-stitching, the cross-scale graph, anchors, matching, losses and decoding on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from revtal.localizers.losses import giou_loss_1d, match_segments, sigmoid_focal_loss
from revtal.localizers.postprocess import PostprocessConfig
from revtal.localizers.vsgn import (
    VSGN,
    CrossScaleGraphBlock,
    StitchPlan,
    VSGNConfig,
    decode_segments,
    make_anchors,
    stitch_batch,
    stitched_targets,
)

SMALL = dict(hidden_dim=16, num_levels=3, head_num_layers=1, stitch_window=64)


def small_model(**overrides) -> VSGN:
    torch.manual_seed(0)
    return VSGN(8, 3, VSGNConfig(**{**SMALL, **overrides}))


def test_output_shapes_cover_every_level_node_and_anchor_scale():
    model = small_model()
    features, mask = torch.randn(2, 8, 70), torch.ones(2, 70, dtype=torch.bool)
    mask[1, 20:] = False  # 20 steps <= 0.4 * 64: stitched into a 64-step sequence
    out = model(features, mask)
    # 70 steps padded to a multiple of the coarsest stride (16): 80 → levels of 20, 10, 5 nodes (strides 4, 8, 16)
    assert [m.shape for m in out.level_masks] == [(2, 20), (2, 10), (2, 5)]
    anchors = (20 + 10 + 5) * 2
    assert out.anchors.shape == (anchors, 2)
    assert out.enc_logits.shape == out.dec_logits.shape == (2, anchors, 3)
    assert out.enc_offsets.shape == out.dec_offsets.shape == out.boundary_offsets.shape == (2, anchors, 2)
    assert out.plans[0] is None and out.plans[1] == StitchPlan(length=20, offset=24, factor=2.0)
    # the stitched video is 64 steps long: 16 valid nodes of the finest level, all 20 for the unstitched one
    assert out.level_masks[0].sum(dim=1).tolist() == [18, 16]


def test_anchors_are_centred_on_the_nodes_they_pool_and_scale_with_the_stride():
    anchors = make_anchors([2, 1], [4, 8], (1.0, 2.0))
    # level 0 nodes pool inputs [0, 4) and [4, 8): centres 1.5 and 5.5; level 1 pools [0, 8): centre 3.5
    expected = [[-0.5, 3.5], [-2.5, 5.5], [3.5, 7.5], [1.5, 9.5], [-0.5, 7.5], [-4.5, 11.5]]
    assert anchors.tolist() == expected


def test_decoding_shifts_the_centre_in_anchor_lengths_and_scales_the_length_exponentially():
    anchors = torch.tensor([[0.0, 4.0]])
    segments = decode_segments(torch.tensor([[0.25, math.log(2.0)]]), anchors)
    assert torch.allclose(segments, torch.tensor([[-1.0, 7.0]]))  # centre 2 + 0.25·4 = 3, length 8
    assert torch.equal(decode_segments(torch.zeros(1, 2), anchors), anchors)


def test_stitching_magnifies_a_short_clip_after_a_gap_and_maps_its_actions_both_ways():
    config = VSGNConfig(stitch_window=32, stitch_gap=2, short_ratio=0.4)
    ramp = torch.arange(10, dtype=torch.float32)[None, None].repeat(1, 2, 1)  # (1, 2, 10), value = position
    long = torch.randn(1, 2, 30)
    features = torch.cat([torch.cat([ramp, torch.zeros(1, 2, 20)], dim=2), long])
    mask = torch.tensor([[True] * 10 + [False] * 20, [True] * 30])
    stitched, stitched_mask, plans = stitch_batch(features, mask, config)
    assert plans == [StitchPlan(length=10, offset=12, factor=2.0), None]  # 32 - 10 - 2 = 20 magnified steps
    assert stitched.shape == (2, 2, 32) and stitched_mask.sum(dim=1).tolist() == [32, 30]
    assert torch.equal(stitched[0, :, :10], ramp[0]) and torch.equal(stitched[0, :, 10:12], torch.zeros(2, 2))
    # linear interpolation of a ramp is the ramp at the mapped positions: step v of the copy shows (v + 0.5)/2 - 0.5
    copy_positions = torch.arange(20, dtype=torch.float32)
    expected = ((copy_positions + 0.5) / 2 - 0.5).clamp(0, 9)
    assert torch.allclose(stitched[0, 0, 12:], expected)
    assert torch.equal(stitched[1, :, :30], long[0]) and not stitched[1, :, 30:].any()

    plan = plans[0]
    segments, labels = stitched_targets(torch.tensor([[1.5, 4.5]]), torch.tensor([2]), plan)
    assert segments.tolist() == [[1.5, 4.5], [15.5, 21.5]] and labels.tolist() == [2, 2]
    assert torch.allclose(plan.to_original(segments[1]), torch.tensor([1.5, 4.5]))
    assert stitched_targets(torch.tensor([[1.0, 2.0]]), torch.tensor([0]), None)[0].tolist() == [[1.0, 2.0]]


def test_stitching_is_off_when_disabled_and_for_videos_longer_than_the_short_ratio():
    features, mask = torch.randn(1, 2, 26), torch.ones(1, 26, dtype=torch.bool)
    assert stitch_batch(features, mask, VSGNConfig(stitch_window=64))[2] == [None]  # 26 > 0.4 · 64
    assert stitch_batch(features[..., :20], mask[..., :20], VSGNConfig(stitch_window=64, stitch=False))[2] == [None]


def test_graph_neighbours_cross_scales_only_in_stitched_videos_and_never_reach_padding():
    block = CrossScaleGraphBlock(dim=1, num_neighbors=2)
    # nodes 0-3 are one scale, 4-7 the other; feature values make every nearest neighbour lie in the same scale
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 100.0, 101.0, 102.0, 103.0]])[:, None].repeat(2, 1, 1)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 7] = False  # padding
    scale = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]).repeat(2, 1)
    index = block.neighbours(x, mask, scale, stitched=torch.tensor([True, False]))
    # stitched: first the nearest other node, then the nearest node of the other scale
    assert index[0, 0].tolist() == [1, 4] and index[0, 3].tolist() == [2, 4] and index[0, 4].tolist() == [5, 3]
    # not stitched: the two nearest other nodes, whatever their scale
    assert index[1, 0].tolist() == [1, 2] and index[1, 4].tolist() == [5, 6]
    assert not (index[:, :7] == 7).any()  # the padded node is nobody's neighbour
    assert not (index[:, :7] == torch.arange(7)[None, :, None]).any()  # nor is a node its own


def test_giou_loss_on_hand_computed_segments():
    pred = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 3.0]])
    target = torch.tensor([[1.0, 3.0], [2.0, 3.0], [1.0, 3.0]])
    # overlap 1 of union 3 = enclosing 3 → 2/3; disjoint, enclosing 3 over union 2 → 1 + 1/3; identical → 0
    assert torch.allclose(giou_loss_1d(pred, target, reduction="none"), torch.tensor([2 / 3, 4 / 3, 0.0]), atol=1e-6)
    assert torch.allclose(giou_loss_1d(pred[[1]].flip(-1), target[[1]]), torch.tensor(4 / 3), atol=1e-6)  # swapped ends


def test_matching_by_tiou_threshold_and_best_candidate_per_action():
    candidates = torch.tensor([[0.0, 4.0], [1.0, 5.0], [10.0, 11.0], [20.0, 30.0]])
    actions = torch.tensor([[0.0, 4.0], [10.0, 14.0]])
    # candidate 1 overlaps action 0 by 3/5 = 0.6; candidate 2 overlaps action 1 by 1/4 only, but best of all
    assert match_segments(candidates, actions, 0.5, best_match=False).tolist() == [0, 0, -1, -1]
    assert match_segments(candidates, actions, 0.7, best_match=False).tolist() == [0, -1, -1, -1]
    assert match_segments(candidates, actions, 0.5, best_match=True).tolist() == [0, 0, 1, -1]
    assert match_segments(candidates, torch.zeros(0, 2), 0.5).tolist() == [-1, -1, -1, -1]


def test_targets_match_anchors_and_the_stitched_copies_of_the_actions():
    model = small_model(anchor_scales=(1.0,), stitch_window=64)
    mask = torch.ones(1, 20, dtype=torch.bool)
    out = model(torch.randn(1, 8, 20), mask)
    plan = out.plans[0]
    assert plan == StitchPlan(length=20, offset=24, factor=2.0)
    action = torch.tensor([[3.5, 7.5]])  # exactly the level-0 anchor of node 1 (stride 4, inputs 4-7)
    matches = model.targets(out, [action], [torch.tensor([1])])["matches"]
    enc = matches["enc"][0]
    positive = torch.nonzero(enc >= 0).flatten().tolist()
    # levels of 16, 8 and 4 nodes (strides 4, 8, 16). The original: level-0 anchor 1 (IoU 1) and level-1 anchor 0
    # ([-0.5, 7.5]: IoU 0.5). The magnified copy [31.5, 39.5]: level-0 anchors 8 and 9 ([31.5, 35.5], [35.5, 39.5]:
    # 0.5 each), level-1 anchor 4 ([31.5, 39.5]: 1) and level-2 anchor 2 ([31.5, 47.5]: 0.5)
    assert positive == [1, 8, 9, 16 + 0, 16 + 4, 24 + 2]
    assert enc[1] == enc[16] == 0 and enc[8] == enc[9] == enc[20] == enc[26] == 1  # original first, then the copy


def test_loss_is_each_stage_focal_and_giou_over_the_ema_of_its_positives():
    model = small_model()
    model.train()
    features, mask = torch.randn(2, 8, 40), torch.ones(2, 40, dtype=torch.bool)
    segments = [torch.tensor([[2.0, 9.0], [20.0, 33.0]]), torch.tensor([[5.0, 12.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    out = model(features, mask)
    matches = model.targets(out, segments, labels)["matches"]
    losses = model.loss(out, segments, labels)

    count = int((matches["enc"] >= 0).sum())
    assert losses["num_positive"] == count > 0
    normaliser = 0.9 * 100 + 0.1 * count
    assert torch.isclose(model.loss_normalizer[0], torch.tensor(normaliser))
    targets = torch.zeros(2, out.anchors.shape[0], 3)
    for video in range(2):
        for anchor in torch.nonzero(matches["enc"][video] >= 0).flatten():
            targets[video, anchor, labels[video][int(matches["enc"][video, anchor])]] = 1  # 40 steps: not stitched
    valid = out.anchor_mask
    expected_cls = sigmoid_focal_loss(out.enc_logits[valid], targets[valid]) / normaliser
    assert torch.allclose(losses["enc_cls"], expected_cls, rtol=1e-5)
    for key in ("enc_reg", "dec_reg", "dec_cls", "boundary"):
        assert torch.isfinite(losses[key]) and losses[key] >= 0
    assert torch.allclose(losses["total"], losses["cls"] + losses["reg"])
    losses["total"].backward()
    assert model.start_adjuster.out.weight.grad is not None and model.enc_head.cls_out.weight.grad is not None

    model.eval()  # evaluation does not move the normalisers
    before = model.loss_normalizer.clone()
    model.loss(model(features, mask), segments, labels)
    assert torch.equal(model.loss_normalizer, before)


def test_a_video_gives_the_same_outputs_whatever_the_batch_pads_it_to():
    model = small_model().eval()
    features = torch.randn(1, 8, 40)
    alone = model(features, torch.ones(1, 40, dtype=torch.bool))
    padded_features = torch.cat([torch.cat([features, torch.randn(1, 8, 60)], dim=2), torch.randn(1, 8, 100)])
    padded_mask = torch.ones(2, 100, dtype=torch.bool)
    padded_mask[0, 40:] = False
    batched = model(padded_features, padded_mask)
    # 40 steps are 10 valid nodes of level 0 (stride 4), 20 anchors, at the start of both anchor tables
    assert alone.anchor_mask[0, :20].all() and not alone.anchor_mask[0, 20:24].any()
    assert batched.anchor_mask[0, :20].all() and not batched.anchor_mask[0, 20:56].any()
    for key in ("enc_logits", "enc_offsets", "dec_logits", "dec_offsets", "boundary_offsets"):
        assert torch.allclose(getattr(batched, key)[0, :20], getattr(alone, key)[0, :20], atol=1e-5), key


def test_detections_from_the_magnified_copy_are_mapped_back_to_the_original_time_axis():
    model = small_model(anchor_scales=(1.0,))
    out = model(torch.randn(1, 8, 20), torch.ones(1, 20, dtype=torch.bool))
    plan = out.plans[0]
    out.dec_logits = torch.full_like(out.dec_logits, -20.0)
    out.dec_offsets = torch.zeros_like(out.dec_offsets)
    out.boundary_offsets = torch.zeros_like(out.boundary_offsets)
    out.dec_logits[0, 9, 2] = 5.0  # level-0 anchor 9: [35.5, 39.5], in the magnified copy
    out.dec_logits[0, 5, 0] = 5.0  # level-0 anchor 5: [19.5, 23.5], centred in the gap: dropped
    out.dec_logits[0, 1, 1] = 4.0  # level-0 anchor 1: [3.5, 7.5], in the original
    config = PostprocessConfig(pre_nms_threshold=0.5, voting_threshold=None)
    detections = model.predict(out, config)[0]
    assert detections["labels"].tolist() == [2, 1]
    expected = plan.to_original(torch.tensor([35.5, 39.5]))  # (v - 24 + 0.5)/2 - 0.5 → [5.5, 7.5]
    assert torch.allclose(detections["segments"], torch.stack([expected, torch.tensor([3.5, 7.5])]))


def test_config_rejects_values_that_cannot_work():
    with pytest.raises(ValueError, match="short_ratio"):
        VSGNConfig(short_ratio=0.6)
    with pytest.raises(ValueError, match="iou_thresholds"):
        VSGNConfig(iou_thresholds=(0.5, 0.6))
    with pytest.raises(ValueError, match="stem_stride"):
        VSGNConfig(stem_stride=3)
    with pytest.raises(ValueError, match="bool mask"):
        small_model()(torch.randn(1, 8, 10), torch.ones(1, 10))


def test_vsgn_learns_synthetic_actions_and_its_loss_falls():
    """Trains on noisy features with class directions inside actions (as the ActionFormer test); scored by mAP."""
    from revtal.data.annotations import AnnotationSet, VideoAnnotation
    from revtal.evaluation.detection import THUMOS_TIOU, evaluate_detection

    from tests.test_localizer_training import synthetic_videos  # the ActionFormer test's data: same difficulty

    channels, classes = 16, 3
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(classes, channels, generator=generator)
    directions = 3.0 * directions / directions.norm(dim=1, keepdim=True)
    train = synthetic_videos(64, generator, directions)
    evaluation = synthetic_videos(24, generator, directions)

    torch.manual_seed(0)
    # 48-64-step videos are stitched with a ~1.5x copy into 160 steps (0.4 · 160 = 64)
    model = VSGN(channels, classes, VSGNConfig(hidden_dim=32, num_levels=3, stem_stride=1, anchor_scales=(2.0, 4.0),
                                               head_num_layers=2, stitch_window=160))
    epochs, batch = 10, 8
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * (64 // batch), pct_start=0.1)
    epoch_losses = []
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(64), 0.0
        for start in range(0, 64, batch):
            index = order[start: start + batch]
            output = model(train[0][index], train[1][index])
            assert all(plan is not None for plan in output.plans)
            losses = model.loss(output, [train[2][i] for i in index], [train[3][i] for i in index])
            optimizer.zero_grad()
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += float(losses["total"].detach())
        epoch_losses.append(total)
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses

    model.eval()
    with torch.no_grad():
        detections = model.predict(model(evaluation[0], evaluation[1]))
    names = ["jump", "run", "throw"]
    results, videos = {}, {}
    for index, video in enumerate(detections):
        vid = f"video_{index}"
        length = int(evaluation[1][index].sum())
        results[vid] = [{"label": names[int(c)], "score": float(s), "segment": seg.tolist()}
                        for seg, s, c in zip(video["segments"], video["scores"], video["labels"])]
        videos[vid] = VideoAnnotation(vid, "validation", float(length), evaluation[2][index].numpy(), evaluation[3][index].numpy())
    result = evaluate_detection(AnnotationSet(classes=names, videos=videos), {"results": results}, THUMOS_TIOU)
    assert result.average_mAP >= 0.7, result.format_table()


def test_the_registry_builds_each_localizer_with_its_own_settings_and_names_the_known_ones():
    from revtal.localizers.registry import build_localizer, get_localizer, localizer_names

    assert localizer_names()[:2] == ["actionformer", "vsgn"]
    model = build_localizer("vsgn", 8, 3, VSGNConfig(**SMALL))
    assert isinstance(model, VSGN) and model.config.hidden_dim == 16
    assert get_localizer("vsgn").settings is VSGNConfig
    with pytest.raises(ValueError, match="unknown localizer 'bmn'; known: actionformer, vsgn"):
        get_localizer("bmn")
    from revtal.localizers.actionformer import ActionFormerConfig

    with pytest.raises(TypeError, match="takes VSGNConfig settings, got ActionFormerConfig"):
        build_localizer("vsgn", 8, 3, ActionFormerConfig())


def test_the_boundary_adjuster_equals_a_kernel_3_conv_over_each_proposals_three_samples():
    from revtal.localizers.vsgn import _BoundaryAdjuster

    torch.manual_seed(0)
    adjuster = _BoundaryAdjuster(16)
    torch.nn.init.normal_(adjuster.out.weight)  # zero at init: make the output depend on the features
    features, positions, distance = torch.randn(2, 16, 30), torch.rand(2, 50) * 100, torch.rand(2, 50) * 5
    fast = adjuster(features, positions, distance, stride=4)
    samples = torch.stack([positions - distance, positions, positions + distance], dim=-1)
    node = torch.round((samples - 1.5) / 4).clamp(0, 29).long()  # nearest node of stride 4 (centres 4j + 1.5)
    gathered = torch.stack([features[b][:, node[b]] for b in range(2)])  # (B, C, P, 3)
    hidden = torch.relu(adjuster.sample_conv(gathered.permute(0, 2, 1, 3).reshape(-1, 16, 3))[..., 0])
    assert torch.allclose(fast, adjuster.out(hidden).view(2, -1), atol=1e-5)


def test_vsgn_trains_through_the_trainer_on_a_feature_set_and_is_scored(tmp_path):
    """localizer.name: vsgn end to end: the same trainer, post-processing and evaluation as ActionFormer."""
    from revtal.experiments import reference_localizer

    root = reference_localizer.generate_feature_set(tmp_path / "features", videos=6, dim=8, classes=3, lengths=(40, 60),
                                                    seed=3)
    options = ("localizer.options={hidden_dim: 16, num_levels: 2, stem_stride: 1, head_num_layers: 1, "
               "anchor_scales: [2.0, 4.0], stitch_window: 160}")
    record = reference_localizer.run_revtal(root, tmp_path / "train", seed=0, epochs=2, warmup_epochs=0, lr=1e-3,
                                            overrides=[options], localizer="vsgn")
    assert 0 < record["parameters"] < 50_000  # the small VSGN, not a default-sized model
    for weights in ("final", "ema"):
        assert 0.0 <= record[weights]["average_mAP"] <= 1.0 and len(record[weights]["mAP"]) == 5
    import yaml

    saved = yaml.safe_load((tmp_path / "train" / "config.yaml").read_text())
    assert saved["localizer"]["name"] == "vsgn" and saved["localizer"]["options"]["hidden_dim"] == 16
