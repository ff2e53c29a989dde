"""Adapters that learn on a frozen video backbone: LoSA, and the baselines of LoSA Tab. 2 — UniPT (a parallel
network beside the backbone, like LoSA) and ST-Adapter and AIM (adapters inside its blocks)."""

from revtal.adapters.aim import AIM, AIMConfig
from revtal.adapters.frozen_backbone import FrozenBackboneAdapter, InBlockAdapter
from revtal.adapters.losa import LoSA, LoSAConfig, LoSAOutput
from revtal.adapters.st_adapter import STAdapter, STAdapterConfig
from revtal.adapters.unipt import UniPT, UniPTConfig

__all__ = [
    "AIM", "AIMConfig", "FrozenBackboneAdapter", "InBlockAdapter", "LoSA", "LoSAConfig", "LoSAOutput", "STAdapter",
    "STAdapterConfig", "UniPT", "UniPTConfig",
]
