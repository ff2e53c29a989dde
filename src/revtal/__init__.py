"""revtal: finetune large pretrained video backbones end to end for temporal action localization.

The public entry points are re-exported here lazily (``import revtal`` stays cheap for the CLI); see README.md.
"""

__version__ = "0.1.0"

_REVERSIBLE_API = ("convert", "reversible_stages", "set_backprop", "set_coefficients")

__all__ = [*_REVERSIBLE_API, "__version__"]


def __getattr__(name: str):
    if name in _REVERSIBLE_API:
        # imported on first use, so that `import revtal` (the CLI's start) does not load torch
        import revtal.reversible as reversible

        return getattr(reversible, name)
    raise AttributeError(f"module 'revtal' has no attribute {name!r}")
