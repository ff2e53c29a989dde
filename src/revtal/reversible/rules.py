"""What a converter family is: :class:`BlockRule` (how blocks of one type convert) and :class:`Family` (the rules of
one library's models, loaded on first use). :mod:`revtal.reversible.families` lists the built-in families and
:mod:`revtal.reversible.convert` registers and applies them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from revtal.reversible.stage import BranchesOf


@dataclass(frozen=True)
class BlockRule:
    """How blocks of one type convert.

    By default the block's forward is traced (:mod:`revtal.reversible.trace`): its residual sums become branches,
    and an instance whose shortcut is not the identity stays an ordinary layer. A hand-written rule supplies
    ``branches_of(block, context) -> [Branch, ...]`` and ``ordinary(block) -> reason | None`` instead. ``when``
    narrows the rule to some instances of the type; ``inline`` names child modules to trace into (where the
    residual sum happens inside a child); ``fixed`` traces forward arguments as constants; ``protocol`` is how the
    model calls the blocks (:class:`~revtal.reversible.stage.CallProtocol`); ``shortcuts`` are module types that may
    sit on a block's shortcut (shape-preserving by construction; they join the branch, see
    :mod:`revtal.reversible.trace`). ``residual=False`` declares a layer type that may sit in a stage among residual
    blocks and always stays ordinary (torchvision MobileNetV2's convolution layers between its inverted residuals).
    """

    block_type: type
    when: Callable[[nn.Module], bool] | None = None
    branches_of: BranchesOf | None = None
    ordinary: Callable[[nn.Module], str | None] | None = None
    inline: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    protocol: str = "tensor"
    describe: str = ""
    shortcuts: tuple[type, ...] = ()
    residual: bool = True

    @property
    def name(self) -> str:
        label = f"{self.block_type.__module__}.{self.block_type.__qualname__}"
        return f"{label} {self.describe}" if self.describe else label

    def applies(self, block: nn.Module) -> bool:
        return type(block) is self.block_type and (self.when is None or self.when(block))


@dataclass
class Family:
    """A model family: the block rules of one library's models, loaded on first use (``rules`` imports it)."""

    name: str
    source: str
    rules: Callable[[], list[BlockRule]]
    notes: str = ""
    requires: str | None = None  # top-level module of the library; rules load only once it has been imported
    _loaded: list[BlockRule] | None = field(default=None, repr=False)

    def block_rules(self) -> list[BlockRule]:
        """The rules, or [] while the family's library is not imported: a model holding its blocks has imported it,
        so converting never imports a library the model does not use (transformers alone takes seconds)."""
        if self.requires is not None and self.requires not in sys.modules:
            return []
        if self._loaded is None:
            try:
                self._loaded = list(self.rules())
            except ImportError:
                self._loaded = []
        return self._loaded

    @property
    def supported(self) -> list[str]:
        if self.requires is not None and self.requires not in sys.modules:
            return [f"{self.name} blocks ({self.notes or self.source}; {self.requires} is not imported)"]
        return [rule.name for rule in self.block_rules()]
