"""Experiments built on the engine: the demo's setting and run (:mod:`~revtal.experiments.demo`), the papers' tables
in miniature (:mod:`~revtal.experiments.study`) and the comparison with the reference ActionFormer
(:mod:`~revtal.experiments.reference_localizer`). Measurement itself lives in :mod:`revtal.bench`."""
