"""revtal: finetune large pretrained video backbones end to end for temporal action localization.

The public entry points are re-exported here; see README.md for the tour.
"""

__version__ = "0.1.0"

from revtal.reversible import convert, reversible_stages, set_backprop, set_coefficients  # noqa: E402

__all__ = ["convert", "reversible_stages", "set_backprop", "set_coefficients", "__version__"]
