"""The ActivityNet detection mAP on hand-computed cases, a naive reference on random data, AR@AN and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from revtal.cli import main as revtal_main
from revtal.data.annotations import AnnotationError, load_annotations
from revtal.evaluation.detection import (
    ANET_TIOU,
    THUMOS_TIOU,
    average_precision,
    average_recall_vs_proposals,
    evaluate_detection,
    interpolated_average_precision,
    temporal_iou,
)


def gt_json(extra_videos: dict | None = None) -> dict:
    """Class A: v1 [10,20], v1 [30,40], v2 [0,10]; class B: v1 [50,60]."""
    database = {
        "v1": {"subset": "validation", "duration": 100.0, "annotations": [
            {"segment": [10.0, 20.0], "label": "A"}, {"segment": [30.0, 40.0], "label": "A"}, {"segment": [50.0, 60.0], "label": "B"}]},
        "v2": {"subset": "validation", "duration": 50.0, "annotations": [{"segment": [0.0, 10.0], "label": "A"}]},
    }
    database.update(extra_videos or {})
    return {"database": database}


def results(*rows) -> dict:
    """rows: (video, label, score, start, end) in file order."""
    out: dict = {}
    for video, label, score, start, end in rows:
        out.setdefault(video, []).append({"label": label, "score": score, "segment": [start, end]})
    return {"results": out}


PERFECT = [("v1", "A", 0.9, 10, 20), ("v1", "A", 0.8, 30, 40), ("v1", "B", 0.7, 50, 60), ("v2", "A", 0.6, 0, 10)]


def test_tiou_thresholds_and_temporal_iou():
    np.testing.assert_allclose(ANET_TIOU, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    np.testing.assert_allclose(THUMOS_TIOU, [0.3, 0.4, 0.5, 0.6, 0.7])
    # [0,10] vs [5,15]: 5/15; vs [10,20]: touching, 0; vs [2,4]: 2/10; vs itself: 1
    np.testing.assert_allclose(temporal_iou([0, 10], [[5, 15], [10, 20], [2, 4], [0, 10]]), [1 / 3, 0, 0.2, 1])


def test_interpolated_ap_uses_the_monotone_envelope():
    # precision 1, .5, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1: envelope 1, .75, .75, .75 → 1/3·1 + 1/3·.75 + 1/3·.75
    assert interpolated_average_precision([1, 0.5, 2 / 3, 0.75], [1 / 3, 1 / 3, 2 / 3, 1]) == pytest.approx(5 / 6)
    # recall never reaches 1: the tail counts nothing
    assert interpolated_average_precision([1.0], [0.5]) == pytest.approx(0.5)


def test_perfect_predictions_score_one():
    result = evaluate_detection(gt_json(), results(*PERFECT), ANET_TIOU)
    assert result.mAP == pytest.approx([1.0] * 10)
    assert result.average_mAP == pytest.approx(1.0)
    assert result.classes == ["A", "B"] and result.per_class_ap.shape == (10, 2)


def test_false_positive_in_the_middle_and_empty_class():
    # class A ranked: TP, FP, TP, TP (3 instances) → AP 5/6; class B has no prediction → 0; mAP over 2 classes
    preds = results(("v1", "A", 0.9, 10, 20), ("v1", "A", 0.8, 70, 80), ("v2", "A", 0.7, 0, 10), ("v1", "A", 0.6, 30, 40))
    result = evaluate_detection(gt_json(), preds, [0.5])
    np.testing.assert_allclose(result.per_class_ap[0], [5 / 6, 0.0])
    assert result.average_mAP == pytest.approx(5 / 12)


def test_order_of_the_file_does_not_matter_but_scores_do():
    shuffled = [PERFECT[i] for i in (3, 1, 2, 0)]
    assert evaluate_detection(gt_json(), results(*shuffled), [0.5]).average_mAP == pytest.approx(1.0)
    # scores shuffled so that the false positive outranks everything: class A ranked FP, TP, TP, TP → AP 3/4
    preds = results(("v1", "A", 0.2, 10, 20), ("v1", "A", 0.95, 70, 80), ("v2", "A", 0.5, 0, 10), ("v1", "A", 0.6, 30, 40))
    assert evaluate_detection(gt_json(), preds, [0.5]).per_class_ap[0, 0] == pytest.approx(0.75)


def test_duplicate_predictions_are_false_positives():
    # the duplicate of a matched instance cannot match again: TP, FP out of 3 instances → AP 1/3
    preds = results(("v1", "A", 0.9, 10, 20), ("v1", "A", 0.8, 10, 20))
    assert evaluate_detection(gt_json(), preds, [0.5]).per_class_ap[0, 0] == pytest.approx(1 / 3)


def test_tiou_exactly_at_the_threshold_is_a_match():
    gt = {"database": {"v": {"subset": "validation", "duration": 10.0, "annotations": [{"segment": [0.0, 2.0], "label": "A"}]}}}
    # [0,1] vs [0,2]: tIoU exactly 0.5
    result = evaluate_detection(gt, results(("v", "A", 0.5, 0.0, 1.0)), [0.5, 0.55])
    np.testing.assert_allclose(result.mAP, [1.0, 0.0])


def test_unknown_video_and_videos_outside_the_subset_are_false_positives():
    preds = results(("v9", "A", 0.95, 10, 20), *PERFECT)  # v9 is not in the ground truth: FP first → A's AP 3/4
    result = evaluate_detection(gt_json(), preds, [0.5])
    np.testing.assert_allclose(result.per_class_ap[0], [0.75, 1.0])

    training_video = {"t1": {"subset": "training", "duration": 30.0, "annotations": [{"segment": [0.0, 10.0], "label": "A"}]}}
    preds = results(("t1", "A", 0.95, 0, 10), *PERFECT)
    subset_result = evaluate_detection(gt_json(training_video), preds, [0.5], subset="validation")
    np.testing.assert_allclose(subset_result.per_class_ap[0], [0.75, 1.0])
    # without the subset the training video's instance is ground truth and the prediction a true positive
    assert evaluate_detection(gt_json(training_video), preds, [0.5]).average_mAP == pytest.approx(1.0)


def test_no_predictions_at_all_scores_zero():
    result = evaluate_detection(gt_json(), {"results": {}}, THUMOS_TIOU)
    assert result.mAP == [0.0] * 5 and result.average_mAP == 0.0
    assert evaluate_detection(gt_json(), {"results": {"v1": []}}, [0.5]).average_mAP == 0.0


def test_labels_without_ground_truth_do_not_change_the_map():
    preds = results(*PERFECT, ("v1", "C", 0.99, 10, 20))
    assert evaluate_detection(gt_json(), preds, [0.5]).average_mAP == pytest.approx(1.0)


def test_ties_keep_input_order():
    gt = {"database": {"v": {"subset": "validation", "duration": 100.0, "annotations": [{"segment": [0.0, 10.0], "label": "A"}]}}}
    fp_first = results(("v", "A", 0.5, 50, 60), ("v", "A", 0.5, 0, 10))  # FP then TP: precision 0, 1/2 → AP 1/2
    tp_first = results(("v", "A", 0.5, 0, 10), ("v", "A", 0.5, 50, 60))
    assert evaluate_detection(gt, fp_first, [0.5]).average_mAP == pytest.approx(0.5)
    assert evaluate_detection(gt, tp_first, [0.5]).average_mAP == pytest.approx(1.0)


def test_greedy_matching_follows_descending_tiou():
    gt = {"database": {"v": {"subset": "validation", "duration": 100.0, "annotations": [
        {"segment": [0.0, 10.0], "label": "A"}, {"segment": [5.0, 15.0], "label": "A"}]}}}
    # [4,14] overlaps [5,15] by 9/11 and [0,10] by 6/14; it takes [5,15], leaving [0,10] for the exact prediction
    preds = results(("v", "A", 0.9, 4, 14), ("v", "A", 0.8, 0, 10))
    np.testing.assert_allclose(evaluate_detection(gt, preds, [0.4]).mAP, [1.0])
    # when the best instance is taken, the next-best free one is tried: [4,14] falls back to [0,10] (tIoU 0.43)
    preds = results(("v", "A", 0.9, 5, 15), ("v", "A", 0.8, 4, 14))
    np.testing.assert_allclose(evaluate_detection(gt, preds, [0.4, 0.5]).mAP, [1.0, 0.5])


def naive_official_ap(gt_rows, pred_rows, thresholds):
    """The official evaluation loop, written out plainly: one prediction at a time, GT visited by descending tIoU."""
    npos = len(gt_rows)
    order = sorted(range(len(pred_rows)), key=lambda i: -pred_rows[i][1])  # Python's sort is stable
    aps = []
    for threshold in thresholds:
        locked, tp, fp = set(), [], []
        for i in order:
            video, _, segment = pred_rows[i]
            candidates = [(j, g) for j, g in enumerate(gt_rows) if g[0] == video]
            if not candidates:
                tp.append(0); fp.append(1); continue
            ious = temporal_iou(segment, [g[1] for _, g in candidates])
            hit = 0
            for k in np.argsort(-ious, kind="stable"):
                if ious[k] < threshold:
                    break
                if candidates[k][0] in locked:
                    continue
                locked.add(candidates[k][0]); hit = 1
                break
            tp.append(hit); fp.append(1 - hit)
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        aps.append(interpolated_average_precision(tp_c / (tp_c + fp_c), tp_c / npos))
    return np.array(aps)


def test_matches_a_naive_reference_on_random_data():
    rng = np.random.default_rng(0)
    gt_rows = []
    for v in range(6):
        for _ in range(rng.integers(0, 4)):
            start = rng.uniform(0, 80)
            gt_rows.append((f"v{v}", (start, start + rng.uniform(2, 20))))
    pred_rows = []
    for _ in range(60):
        video, (s, e) = gt_rows[rng.integers(len(gt_rows))] if rng.random() < 0.7 else (f"v{rng.integers(8)}", (40.0, 50.0))
        jitter = rng.normal(0, 2, 2)
        score = round(float(rng.random()), 1)  # coarse scores: plenty of ties
        pred_rows.append((video, score, (s + jitter[0], max(s + jitter[0] + 0.5, e + jitter[1]))))
    by_video: dict = {}
    for video, segment in gt_rows:
        by_video.setdefault(video, []).append(segment)
    ours = average_precision({v: np.array(s) for v, s in by_video.items()}, [p[0] for p in pred_rows],
                             np.array([p[2] for p in pred_rows]), np.array([p[1] for p in pred_rows]), ANET_TIOU)
    np.testing.assert_allclose(ours, naive_official_ap(gt_rows, pred_rows, ANET_TIOU), atol=1e-12)


def test_annotation_set_input_equals_json_input():
    preds = results(("v1", "A", 0.9, 10, 20), ("v1", "B", 0.8, 49, 61), ("v2", "A", 0.3, 1, 10))
    from_json = evaluate_detection(gt_json(), preds, THUMOS_TIOU)
    from_set = evaluate_detection(load_annotations(gt_json()), preds, THUMOS_TIOU)
    np.testing.assert_allclose(from_json.per_class_ap, from_set.per_class_ap)


def test_average_recall_vs_proposals_by_hand():
    proposals = {"results": {
        "v1": [{"segment": [10, 20], "score": 0.9}, {"segment": [50, 60], "score": 0.8}, {"segment": [30, 40], "score": 0.7}],
        "v2": [{"segment": [60, 70], "score": 0.9}, {"segment": [0, 10], "score": 0.5}, {"segment": [20, 30], "score": 0.1}],
    }}
    gt = {"database": {
        "v1": {"subset": "validation", "duration": 100.0, "annotations": [{"segment": [10.0, 20.0], "label": "A"}, {"segment": [30.0, 40.0], "label": "B"}]},
        "v2": {"subset": "validation", "duration": 100.0, "annotations": [{"segment": [0.0, 10.0], "label": "A"}]},
    }}
    result = average_recall_vs_proposals(gt, proposals, [0.5], max_average_proposals=3, num_points=3)
    # 1 proposal per video recalls v1's [10,20]; 2 also v2's [0,10]; 3 also v1's [30,40]
    np.testing.assert_allclose(result.average_proposals, [1, 2, 3])
    np.testing.assert_allclose(result.average_recall, [1 / 3, 2 / 3, 1])
    assert result.auc == pytest.approx((0.5 * (1 / 3 + 2 / 3) + 0.5 * (2 / 3 + 1)) / 3)
    assert result.recall_at(2) == pytest.approx(2 / 3)


def test_malformed_predictions_name_the_problem():
    with pytest.raises(AnnotationError, match="v1.*score"):
        evaluate_detection(gt_json(), {"results": {"v1": [{"label": "A", "segment": [0, 1]}]}}, [0.5])
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_detection(gt_json(), results(*PERFECT), [0.0, 0.5])


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    gt_path, pred_path, out_path = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "out" / "map.json"
    gt_path.write_text(json.dumps(gt_json()))
    pred_path.write_text(json.dumps(results(("v1", "A", 0.9, 10, 20), ("v1", "A", 0.8, 70, 80), ("v2", "A", 0.7, 0, 10), ("v1", "A", 0.6, 30, 40))))
    code = revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path), "--tiou", "0.5,0.7", "--subset", "validation", "--json", str(out_path)])
    assert code == 0
    written = json.loads(out_path.read_text())
    assert written == {"tiou": [0.5, 0.7], "mAP": [pytest.approx(5 / 12)] * 2, "average_mAP": pytest.approx(5 / 12)}
    printed = capsys.readouterr().out
    assert "41.67" in printed and "avg" in printed

    code = revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path), "--dataset", "thumos", "--json", str(out_path)])
    assert code == 0 and len(json.loads(out_path.read_text())["tiou"]) == 5


def test_cli_reports_malformed_input(tmp_path, capsys):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt_json()))
    pred_path.write_text(json.dumps({"results": {"v2": [{"label": "A", "score": "high", "segment": [0, 1]}]}}))
    assert revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path)]) == 2
    error = capsys.readouterr().err
    assert "pred.json" in error and "v2" in error and "score" in error
    assert revtal_main(["evaluate", "--gt", str(tmp_path / "missing.json"), "--pred", str(pred_path)]) == 2
    with pytest.raises(SystemExit):
        revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path), "--tiou", "0.5,abc"])


def test_cli_warns_about_predictions_for_videos_outside_the_ground_truth(tmp_path, capsys):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt_json()))
    pred_path.write_text(json.dumps(results(*PERFECT, ("v9", "A", 0.5, 0, 10), ("v9", "B", 0.4, 0, 10))))
    assert revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "1 of 3 predicted videos are not in the ground truth" in warnings[0]
    assert "2 predictions count as false positives" in warnings[0] and "'v9'" in warnings[0]


@pytest.mark.parametrize("prefix_on", ["predictions", "ground truth"])
def test_cli_hints_at_a_v_prefix_mismatch(prefix_on, tmp_path, capsys):
    gt, rows = gt_json(), PERFECT
    if prefix_on == "predictions":
        rows = [("v_" + video, *rest) for video, *rest in PERFECT]
    else:
        gt = {"database": {"v_" + vid: entry for vid, entry in gt["database"].items()}}
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(results(*rows)))
    assert revtal_main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path)]) == 0
    captured = capsys.readouterr()
    assert "0.00" in captured.out
    change = "removing" if prefix_on == "predictions" else "adding"
    assert f"2 of them match a ground-truth video after {change} the 'v_' prefix" in captured.err
    assert "2 ground-truth videos with actions have no predictions" in captured.err


def test_matching_ids_give_no_warning():
    result = evaluate_detection(gt_json(), results(*PERFECT), [0.5])
    assert result.warnings == [] and result.average_mAP == pytest.approx(1.0)


def test_ground_truth_past_the_declared_duration_is_scored_as_distributed():
    # THUMOS-14 has 26 test segments ending after their video's declared duration; the official code scores them
    # as they are. Clipped to [8, 10], the exact detection [8, 14] would reach tIoU 1/3 and score 0 at 0.5.
    gt = {"database": {"v": {"subset": "test", "duration": 10.0, "annotations": [
        {"segment": [8.0, 14.0], "label": "A"}, {"segment": [1.0, 3.0], "label": "A"}]}}}
    result = evaluate_detection(gt, results(("v", "A", 0.9, 8.0, 14.0), ("v", "A", 0.8, 1.0, 3.0)), [0.5, 0.7])
    assert result.mAP == [1.0, 1.0]


def test_duplicate_ground_truth_instances_count_as_distributed():
    gt = {"database": {"v": {"subset": "test", "duration": 10.0, "annotations": [
        {"segment": [1.0, 3.0], "label": "A"}, {"segment": [1.0, 3.0], "label": "A"}]}}}
    # one detection recalls one of the two instances: AP = 1/2
    assert evaluate_detection(gt, results(("v", "A", 0.9, 1.0, 3.0)), [0.5]).mAP == [0.5]


def test_thumos_ambiguous_instances_excuse_overlapping_false_positives_only_under_the_thumos_protocol():
    gt = {"database": {"v": {"subset": "test", "duration": 10.0, "annotations": [
        {"segment": [0.0, 2.0], "label": "A"}, {"segment": [5.0, 6.0], "label": "Ambiguous"}]}}}
    pred = results(("v", "A", 0.9, 5.2, 6.0), ("v", "A", 0.5, 0.0, 2.0), ("v", "A", 0.7, 8.0, 9.0))
    thumos = evaluate_detection(gt, pred, [0.5])
    ignore = evaluate_detection(gt, pred, [0.5], ambiguous="ignore")
    assert thumos.classes == ["A"]  # Ambiguous is no class
    # THUMOS: the false positive over the Ambiguous instance is dropped, the one at [8, 9] still counts: P = 1/2
    assert thumos.mAP == [0.5]
    # counted: two false positives ranked first: P = 1/3
    assert ignore.mAP == pytest.approx([1 / 3])


def test_a_json_with_segments_past_the_duration_and_duplicates_scores_as_the_naive_reference():
    # through the file loader: each video declares 60 s, a third of the random instances end after it, and some
    # instances are listed twice; the reference reads the rows as they are, as the official code does
    rng = np.random.default_rng(1)
    gt_rows = []
    for v in range(6):
        for _ in range(rng.integers(1, 5)):
            start = rng.uniform(0, 70)
            gt_rows.append((f"v{v}", (start, start + rng.uniform(2, 20))))
    gt_rows += gt_rows[:3]
    assert sum(end > 60 for _, (_, end) in gt_rows) >= 3
    pred_rows = []
    for _ in range(60):
        video, (s, e) = gt_rows[rng.integers(len(gt_rows))]
        jitter = rng.normal(0, 1.5, 2)
        pred_rows.append((video, round(float(rng.random()), 2), (s + jitter[0], max(s + jitter[0] + 0.5, e + jitter[1]))))
    database = {f"v{v}": {"subset": "test", "duration": 60.0, "annotations": []} for v in range(6)}
    for video, (s, e) in gt_rows:
        database[video]["annotations"].append({"label": "A", "segment": [s, e]})
    result = evaluate_detection({"database": database},
                                results(*[(v, "A", score, s, e) for v, score, (s, e) in pred_rows]), ANET_TIOU)
    np.testing.assert_allclose(result.per_class_ap[:, 0], naive_official_ap(gt_rows, pred_rows, ANET_TIOU), atol=1e-12)
