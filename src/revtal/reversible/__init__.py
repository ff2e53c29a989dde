"""Reversible stages: coupling maths, memory-free autograd, converters per model family, diagnostics."""

from revtal.reversible.convert import (
    FAMILIES,
    ConversionReport,
    Family,
    StageSpec,
    convert,
    register_family,
    set_backprop,
    set_coefficients,
    supported_types,
)
from revtal.reversible.coupling import Coupling, FloatArithmetic
from revtal.reversible.exact import Dyadic, ExactArithmetic, nearest_dyadic
from revtal.reversible.function import Branch, NonFiniteGradientError, ReconstructionCheck
from revtal.reversible.stage import BACKPROP_MODES, ReversibleStage, reversible_stages

# importing a family module registers its converter
from revtal.reversible import vit  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKPROP_MODES", "Branch", "ConversionReport", "Coupling", "Dyadic", "ExactArithmetic", "FAMILIES", "Family",
    "FloatArithmetic", "NonFiniteGradientError", "ReconstructionCheck", "ReversibleStage", "StageSpec", "convert",
    "nearest_dyadic", "register_family", "reversible_stages", "set_backprop", "set_coefficients", "supported_types",
]
