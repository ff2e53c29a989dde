"""Reversible stages: coupling maths, memory-free autograd, converters per model family, diagnostics."""

from revtal.reversible.convert import (
    FAMILIES,
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
from revtal.reversible import swin  # noqa: E402,F401  isort: skip
from revtal.reversible import resnet  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKPROP_MODES", "Branch", "Coupling", "Dyadic", "ExactArithmetic", "FAMILIES", "Family",
    "FloatArithmetic", "NonFiniteGradientError", "ReconstructionCheck", "ReversibleStage", "StageSpec", "convert",
    "nearest_dyadic", "register_family", "reversible_stages", "set_backprop", "set_coefficients", "supported_types",
]

# Dr²Net dynamic finetuning, gradient-error diagnostics and online reconstruction safety
from revtal.reversible.diagnostics import GradientComparison, atol_level, compare_gradients, gradient_errors  # noqa: E402
from revtal.reversible.safety import ReconstructionEvent, ReconstructionMonitor, ReconstructionWarning  # noqa: E402
from revtal.reversible.schedule import PRESETS as SCHEDULE_PRESETS, AutoEndReport, CoefficientSchedule  # noqa: E402

__all__ += [
    "AutoEndReport", "CoefficientSchedule", "GradientComparison", "ReconstructionEvent", "ReconstructionMonitor",
    "ReconstructionWarning", "SCHEDULE_PRESETS", "atol_level", "compare_gradients", "gradient_errors",
]
