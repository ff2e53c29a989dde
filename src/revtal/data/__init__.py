"""Data for temporal action localization.

* :mod:`~revtal.data.timeline` — the one mapping between sequence positions and seconds (``TemporalGrid``).
* :mod:`~revtal.data.annotations` — ActivityNet / THUMOS ground truth (validated) and the ActivityNet results format.
* :mod:`~revtal.data.decoding` — PyAV probing and decoding of the frames shown at given times.
* :mod:`~revtal.data.transforms` — temporally consistent augmentation of (C, T, H, W) clips.
* :mod:`~revtal.data.dataset` — video and feature datasets, ``collate_tal`` and a deterministic ``build_loader``.
* :mod:`~revtal.data.synthetic` — the embedded synthetic untrimmed-video dataset (``revtal synth``).

Submodules are imported explicitly (``from revtal.data.dataset import VideoTALDataset``) so that reading
annotations does not pull in torch or PyAV.
"""
