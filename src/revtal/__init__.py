"""revtal: finetune large pretrained video backbones end to end for temporal action localization.

The public entry points are re-exported here; see README.md for the tour.
"""

__version__ = "0.1.0"
