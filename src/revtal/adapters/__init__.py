"""Adapters that learn beside a frozen video backbone (LoSA)."""

from revtal.adapters.losa import LoSA, LoSAConfig, LoSAOutput

__all__ = ["LoSA", "LoSAConfig", "LoSAOutput"]
