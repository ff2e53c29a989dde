"""Reversible stages: coupling maths, memory-free autograd, the conversion engine, diagnostics.

Importing this package needs torch only: converter families import their libraries (timm, torchvision,
pytorchvideo, transformers) when a conversion first needs them (:mod:`revtal.reversible.families`).
"""

from revtal.reversible.convert import (
    FAMILIES,
    BlockRule,
    Family,
    convert,
    register_family,
    registered_families,
    residual_functions,
    set_backprop,
    set_coefficients,
    supported_types,
)
from revtal.reversible.coupling import Coupling, FloatArithmetic
from revtal.reversible.exact import Dyadic, ExactArithmetic, nearest_dyadic
from revtal.reversible.function import Branch, NonFiniteGradientError, ReconstructionCheck, UnsupportedBackwardError
from revtal.reversible.stage import BACKPROP_MODES, BypassError, CallProtocol, ReversibleStage, reversible_stages

__all__ = [
    "BACKPROP_MODES", "BlockRule", "Branch", "BypassError", "CallProtocol", "Coupling", "Dyadic", "ExactArithmetic",
    "FAMILIES", "Family", "FloatArithmetic", "NonFiniteGradientError", "ReconstructionCheck", "ReversibleStage",
    "UnsupportedBackwardError", "convert", "nearest_dyadic", "register_family", "registered_families", "residual_functions", "reversible_stages",
    "set_backprop", "set_coefficients", "supported_types",
]

# Dr²Net dynamic finetuning, gradient-error diagnostics and online reconstruction safety
from revtal.reversible.diagnostics import GradientComparison, atol_level, compare_gradients, gradient_errors  # noqa: E402
from revtal.reversible.safety import ReconstructionEvent, ReconstructionMonitor, ReconstructionWarning  # noqa: E402
from revtal.reversible.schedule import PRESETS as SCHEDULE_PRESETS, AutoEndReport, CoefficientSchedule  # noqa: E402

__all__ += [
    "AutoEndReport", "CoefficientSchedule", "GradientComparison", "ReconstructionEvent", "ReconstructionMonitor",
    "ReconstructionWarning", "SCHEDULE_PRESETS", "atol_level", "compare_gradients", "gradient_errors",
]
