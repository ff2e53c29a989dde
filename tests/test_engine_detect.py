"""revtal detect's outputs: timeline titles that say what is drawn."""

from revtal.evaluation.plots import plot_timeline, shown_detections, timeline_title


def _detections(*scores):
    return [{"label": "a", "score": s, "segment": [i, i + 1.0]} for i, s in enumerate(scores)]


def test_timeline_title_counts_what_is_drawn_out_of_what_the_results_hold(tmp_path):
    low = _detections(*[0.1] * 49)
    title = timeline_title("bikes", low, min_score=0.2, max_detections=8)
    assert title.startswith("bikes: 0 of 49 detections drawn") and "best score is 0.10" in title
    many = _detections(*[0.9] * 12, 0.1)
    assert len(shown_detections(many, 0.2, 8)) == 8
    assert timeline_title("v", many, 0.2, 8).startswith("v: 8 of 13 detections drawn (the best 8 of 12 with score ≥ 0.2)")
    assert timeline_title("v", _detections(0.5, 0.1), 0.2, 8).startswith("v: 1 of 2 detections drawn (those with score ≥ 0.2)")
    assert plot_timeline(tmp_path / "v.png", "v", 20.0, low, ["a"]).read_bytes()[:4] == b"\x89PNG"
