"""Benchmarks: memory and step time of every training mode (``revtal bench memory|speed``), one fresh process per
configuration; see :mod:`revtal.bench.worker` for what is measured and docs/BENCHMARKS.md for results."""
