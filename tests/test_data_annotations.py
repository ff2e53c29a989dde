"""Annotation loading/validation and the ActivityNet results format."""

import json
import logging

import numpy as np
import pytest

from revtal.data.annotations import (
    AnnotationError,
    AnnotationSet,
    VideoAnnotation,
    load_annotations,
    read_predictions,
    save_annotations,
    write_predictions,
)


def _db(**videos):
    return {"version": "x", "database": videos}


def _video(subset="training", duration=10.0, annotations=(), **extra):
    return {"subset": subset, "duration": duration, "annotations": list(annotations), **extra}


def _inst(start, end, label):
    return {"segment": [start, end], "label": label}


def test_activitynet_layout_classes_sorted_and_indexed(tmp_path):
    data = _db(
        v1=_video("training", 20.0, [_inst(1.0, 5.0, "jump"), _inst(6.0, 8.5, "run")], url="u", resolution="1x1"),
        v2=_video("validation", 12.5, [_inst(0.0, 12.5, "clap")]),
        v3=_video("testing", 7.0, []),
    )
    path = tmp_path / "anet.json"
    path.write_text(json.dumps(data))
    ann = load_annotations(path)
    assert ann.classes == ["clap", "jump", "run"]
    assert ann.class_index() == {"clap": 0, "jump": 1, "run": 2}
    v1 = ann.videos["v1"]
    assert v1.subset == "training" and v1.duration == 20.0 and v1.fps is None
    np.testing.assert_array_equal(v1.segments, [[1.0, 5.0], [6.0, 8.5]])
    assert v1.segments.dtype == np.float64 and v1.labels.dtype == np.int64
    np.testing.assert_array_equal(v1.labels, [1, 2])
    assert ann.videos["v3"].segments.shape == (0, 2)
    # subset selection keeps the whole-file class list so indices agree across subsets
    val = load_annotations(path, subset="validation")
    assert list(val.videos) == ["v2"] and val.classes == ann.classes
    assert list(ann.subset(["training", "validation"]).videos) == ["v1", "v2"]
    assert list(ann.subset("train").videos) == ["v1"] and list(ann.subset("Val").videos) == ["v2"]


def test_thumos_style_fps_ambiguous_duplicates_blocked_and_fixed_classes(tmp_path):
    data = _db(
        video_validation_1=_video(
            "Validation",
            30.0,
            [_inst(2.0, 4.0, "Diving"), _inst(2.0, 4.0, "Diving"), _inst(5.0, 6.0, "Ambiguous"), _inst(7, 9, "Shotput")],
            fps=30.0,
        ),
        video_validation_2=_video("Validation", 30.0, [_inst(1.0, 2.0, "Diving")], fps=25),
        video_test_1=_video("Test", 40.0, [_inst(3.0, 9.0, "Shotput")], fps=30.0),
    )
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("video_validation_2  # missing download\n\n")
    ann = load_annotations(data, classes=["Shotput", "Diving"], blocked=blocked)
    assert ann.classes == ["Shotput", "Diving"]
    assert set(ann.videos) == {"video_validation_1", "video_test_1"}
    v = ann.videos["video_validation_1"]
    assert v.subset == "validation" and v.fps == 30.0
    # as distributed (what evaluation scores): the duplicate Diving instance stays, Ambiguous is kept apart
    np.testing.assert_array_equal(v.segments, [[2.0, 4.0], [2.0, 4.0], [7.0, 9.0]])
    np.testing.assert_array_equal(v.labels, [1, 1, 0])
    np.testing.assert_array_equal(v.ambiguous, [[5.0, 6.0]])
    # trained on once
    segments, labels = v.training_targets()
    np.testing.assert_array_equal(segments, [[2.0, 4.0], [7.0, 9.0]])
    np.testing.assert_array_equal(labels, [1, 0])
    assert ann.videos["video_test_1"].subset == "testing"
    assert list(ann.subset("test").videos) == ["video_test_1"]


def test_top_level_class_list_fixes_order():
    data = {"classes": ["b", "a"], "database": {"x": _video(annotations=[_inst(0, 1, "a")])}}
    ann = load_annotations(data)
    assert ann.classes == ["b", "a"] and ann.videos["x"].labels.tolist() == [1]


@pytest.mark.parametrize(
    "video, needles",
    [
        ({"duration": 5.0, "annotations": []}, ["'vid7'", "'subset'", "missing"]),
        (_video(subset="trainval"), ["'vid7'", "'subset'", "trainval"]),
        ({"subset": "training", "annotations": []}, ["'vid7'", "'duration'", "missing"]),
        (_video(duration=-3.0), ["'vid7'", "'duration'", "> 0"]),
        (_video(duration="long"), ["'vid7'", "'duration'", "number"]),
        (_video(annotations=[_inst(0, 1, "a"), _inst(5.0, 2.0, "a")]), ["'vid7'", "annotations[1]", "'segment'", "inverted"]),
        (_video(annotations=[_inst(-1.0, 2.0, "a")]), ["'vid7'", "annotations[0]", "'segment'", "negative"]),
        (_video(annotations=[_inst(1.0, 2.0, "zebra")]), ["'vid7'", "annotations[0]", "'label'", "zebra"]),
        (_video(annotations=[{"label": "a"}]), ["'vid7'", "annotations[0]", "'segment'"]),
        (_video(annotations=[{"segment": [1.0], "label": "a"}]), ["'vid7'", "'segment'", "[start, end]"]),
    ],
)
def test_validation_errors_name_video_and_field(video, needles):
    data = {"classes": ["a"], "database": {"vid7": video}}
    with pytest.raises(AnnotationError) as info:
        load_annotations(data)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_segments_past_duration_are_kept_as_distributed_and_clipped_only_for_training(caplog):
    data = _db(v=_video(duration=10.0, annotations=[_inst(8.0, 12.0, "a"), _inst(10.5, 11.0, "a"), _inst(1, 2, "a")]))
    with caplog.at_level(logging.WARNING, logger="revtal.data.annotations"):
        ann = load_annotations(data)
    np.testing.assert_array_equal(ann.videos["v"].segments, [[8.0, 12.0], [10.5, 11.0], [1.0, 2.0]])
    segments, labels = ann.videos["v"].training_targets()
    np.testing.assert_array_equal(segments, [[8.0, 10.0], [1.0, 2.0]])
    assert "v [8, 12] > 10 s" in caplog.text and "2 segments end past" in caplog.text and "clip" in caplog.text


def test_a_video_id_given_twice_is_an_error_naming_both_entries(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{"database": {"v1": {"subset": "training", "duration": 10, "annotations": []}, '
                    '"v2": {"subset": "training", "duration": 5, "annotations": []}, '
                    '"v1": {"subset": "validation", "duration": 12, "annotations": []}}}')
    with pytest.raises(AnnotationError) as error:
        load_annotations(path)
    message = str(error.value)
    assert "video id 'v1' appears twice" in message and "entry 1" in message and "entry 3" in message
    assert "duration 10" in message and "duration 12" in message and str(path) in message


@pytest.mark.parametrize("duration", [1e308, 4e7])
def test_an_absurd_duration_is_a_one_line_error(duration):
    with pytest.raises(AnnotationError, match="'vid'.*'duration'.*more than a year"):
        load_annotations({"database": {"vid": _video(duration=duration)}})


def test_a_duration_far_from_the_decoded_length_is_named_with_both_values():
    from revtal.data.annotations import duration_mismatch

    message = duration_mismatch("clip", annotated=40.0, decoded=4.0)
    assert "'clip'" in message and "40 s" in message and "4 s" in message
    assert duration_mismatch("clip", annotated=4.1, decoded=4.0) is None  # within 5 %
    assert duration_mismatch("clip", annotated=4.3, decoded=4.0) is not None


def test_unknown_subset_request_and_missing_file(tmp_path):
    ann = load_annotations(_db(v=_video()))
    with pytest.raises(AnnotationError, match="unknown subset 'holdout'"):
        ann.subset("holdout")
    with pytest.raises(AnnotationError, match="no videos"):
        ann.subset("validation")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotations(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json"):
        load_annotations(bad)
    with pytest.raises(AnnotationError, match="database"):
        load_annotations({"videos": {}})


def test_annotation_set_json_round_trip(tmp_path):
    ann = AnnotationSet(
        classes=["x", "y"],
        videos={
            "a": VideoAnnotation("a", "training", 9.5, np.array([[0.5, 2.25]]), np.array([1]), fps=8.0),
            "b": VideoAnnotation("b", "validation", 4.0, np.zeros((0, 2)), np.zeros(0)),
        },
    )
    save_annotations(tmp_path / "gt.json", ann)
    back = load_annotations(tmp_path / "gt.json")
    assert back.classes == ["x", "y"] and list(back.videos) == ["a", "b"]
    np.testing.assert_array_equal(back.videos["a"].segments, [[0.5, 2.25]])
    assert back.videos["a"].labels.tolist() == [1] and back.videos["a"].fps == 8.0
    assert back.videos["b"].fps is None and len(back.videos["b"].labels) == 0


def test_predictions_round_trip_with_numpy_values(tmp_path):
    results = {
        "v1": [
            {"label": "jump", "score": np.float32(0.75), "segment": np.array([1.5, 4.0])},
            {"label": "run", "score": 1, "segment": [0.0, 0.0]},
        ],
        "v2": [],
    }
    path = tmp_path / "out" / "pred.json"
    write_predictions(path, results, external_data={"used": True, "details": "video-level classifier"})
    raw = json.loads(path.read_text())
    assert raw["version"] == "VERSION 1.3"
    assert raw["external_data"] == {"used": True, "details": "video-level classifier"}
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind
    back = read_predictions(path)
    assert back == {
        "v1": [
            {"label": "jump", "score": 0.75, "segment": [1.5, 4.0]},
            {"label": "run", "score": 1.0, "segment": [0.0, 0.0]},
        ],
        "v2": [],
    }
    assert read_predictions(raw) == back
    write_predictions(tmp_path / "p2.json", back)
    assert json.loads((tmp_path / "p2.json").read_text())["external_data"] == {"used": False, "details": ""}


@pytest.mark.parametrize(
    "results, needles",
    [
        ({"vA": [{"label": "a", "score": 0.5}]}, ["'vA'", "[0]", "'segment'"]),
        ({"vA": [{"label": "a", "score": 0.5, "segment": [0, 1]}, {"label": "a", "score": "hi", "segment": [0, 1]}]},
         ["'vA'", "[1]", "'score'"]),
        ({"vA": [{"label": 3, "score": 0.5, "segment": [0, 1]}]}, ["'vA'", "[0]", "'label'"]),
        ({"vA": [{"label": "a", "score": 0.5, "segment": [4, 1]}]}, ["'vA'", "[0]", "'segment'", "inverted"]),
        ({"vA": [{"label": "a", "score": float("nan"), "segment": [0, 1]}]}, ["'vA'", "'score'", "finite"]),
        ({"vA": {"label": "a"}}, ["'vA'", "list"]),
    ],
)
def test_prediction_errors_name_video_index_field(results, needles):
    with pytest.raises(AnnotationError) as info:
        read_predictions({"results": results})
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_predictions_need_results_key_and_failed_write_keeps_old_file(tmp_path):
    with pytest.raises(AnnotationError, match="results"):
        read_predictions({"version": "1"})
    path = tmp_path / "pred.json"
    write_predictions(path, {"v": []})
    before = path.read_text()
    with pytest.raises(AnnotationError):
        write_predictions(path, {"v": [{"label": "a"}]})
    assert path.read_text() == before


def test_actionformer_thumos14_and_activitynet_files_load_as_distributed():
    # ActionFormer's thumos14.json: subsets Validation / Test, fps, segment(frames), label_id (its class order)
    actionformer = {"version": "Thumos14-30fps", "database": {
        "video_validation_0000051": {"subset": "Validation", "duration": 169.79, "fps": 30.0, "annotations": [
            {"label": "Billiards", "segment": [82.3, 186.3], "segment(frames)": [2469.0, 5589.0], "label_id": 2},
            {"label": "BaseballPitch", "segment": [1.0, 2.0], "segment(frames)": [30.0, 60.0], "label_id": 0}]},
        "video_test_0000004": {"subset": "Test", "duration": 33.5, "fps": 30.0, "annotations": [
            {"label": "CleanAndJerk", "segment": [0.2, 1.1], "segment(frames)": [6.0, 33.0], "label_id": 3},
            {"label": "BasketballDunk", "segment": [3.0, 4.0], "segment(frames)": [90.0, 120.0], "label_id": 1}]}}}
    ann = load_annotations(actionformer)
    assert ann.classes == ["BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk"]
    assert ann.videos["video_validation_0000051"].subset == "validation"
    assert ann.videos["video_test_0000004"].subset == "testing"
    np.testing.assert_array_equal(ann.videos["video_validation_0000051"].segments[0], [82.3, 186.3])  # past 169.79
    # activity_net.v1-3.min.json: taxonomy, urls, testing videos without annotations
    anet = {"version": "VERSION 1.3", "taxonomy": [{"nodeName": "Dodgeball", "nodeId": 1}], "database": {
        "-zZJmyj3ZoQ": {"subset": "training", "duration": 92.18, "resolution": "640x360", "url": "https://...",
                        "annotations": [{"segment": [1.5, 80.2], "label": "Dodgeball"}]},
        "--1DO2V4K74": {"subset": "testing", "duration": 211.53, "resolution": "1280x720", "url": "https://...",
                        "annotations": []}}}
    anet_set = load_annotations(anet)
    assert anet_set.classes == ["Dodgeball"] and len(anet_set.subset("testing").videos["--1DO2V4K74"].labels) == 0
