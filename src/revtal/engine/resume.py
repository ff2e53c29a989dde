"""Resuming a run: the checkpoint's config is the recipe.

``revtal train --resume OUT/last.pt`` continues with the config stored in the checkpoint. A config file and
``--set`` overrides given as well are applied on top of it; if that changes any value, the resume is refused with
the changed keys listed, unless ``--allow-config-change``, which prints every changed key and goes on. The run stays
in the checkpoint's directory (``train.out_dir`` is not compared: a moved run directory resumes where it is now).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revtal.engine.config import Config, config_from_dict, read_recipe, recipe_source
from revtal.engine.run_state import TrainingCheckpoint
from revtal.errors import UserError

# keys that say where a run is, not what it computes
NOT_COMPARED = ("train.out_dir",)


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; free-form mappings (options) are flattened too, lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def merge(base: Mapping, update: Mapping) -> dict:
    """``base`` with ``update``'s values put in, section by section (recursive dict update)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_changes(before: Mapping, after: Mapping) -> list[tuple[str, Any, Any]]:
    """``(dotted key, before, after)`` for every value that differs (a missing key reads as ``<unset>``)."""
    old, new = flatten(before), flatten(after)
    unset = "<unset>"
    return [
        (key, old.get(key, unset), new.get(key, unset))
        for key in sorted(set(old) | set(new))
        if key not in NOT_COMPARED and old.get(key, unset) != new.get(key, unset)
    ]


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


def check_resume_changes(checkpoint: str, changes: list[tuple[str, Any, Any]], allow: bool) -> list[str]:
    """Refuse a resume that changes the recipe (unless ``allow``); returns the lines to print for the changes."""
    if changes and not allow:
        raise UserError(
            f"--resume {checkpoint}: the given config changes {len(changes)} value(s) of the run's own config "
            f"({format_changes(changes)}); drop them to continue the run as it was, or pass --allow-config-change"
        )
    return [f"config change on resume: {key}: {old!r} -> {new!r}" for key, old, new in changes]


def checkpoint_config(checkpoint: "TrainingCheckpoint", recipe: str | Path | None = None, overrides=()) -> "Config":
    """The config of a checkpoint's run, with a recipe file's and overrides' values applied over it (when neither is
    given, the run's own): what ``revtal eval`` runs a trained model with (e.g. ``--set data.val_subset=testing``)."""
    changes = read_recipe(recipe, overrides)
    return config_from_dict(merge(checkpoint.state["config"], changes),
                            f"{checkpoint.path} (its config with {recipe_source(recipe, overrides)})")


def resumed_config(checkpoint: "str | Path | TrainingCheckpoint", recipe: str | Path | None = None, overrides=(), allow_change: bool = False,
                   out_dir: str | Path | None = None):
    """The config a ``--resume checkpoint`` run continues with: the checkpoint's own, with the recipe file's and the
    overrides' values applied over it (refused if that changes anything, unless ``allow_change``), in the
    checkpoint's directory (or ``out_dir``). Returns ``(config, lines describing the changes)``."""
    loaded = checkpoint if isinstance(checkpoint, TrainingCheckpoint) else TrainingCheckpoint(checkpoint)
    checkpoint = loaded.path
    stored = loaded.state["config"]
    merged = merge(stored, read_recipe(recipe, overrides)) if (recipe or overrides) else copy.deepcopy(stored)
    merged.setdefault("train", {})["out_dir"] = str(out_dir if out_dir is not None else Path(checkpoint).parent)
    source = f"{checkpoint} (its config" + (f" with {recipe_source(recipe, overrides)})" if recipe or overrides else ")")
    config = config_from_dict(merged, source)
    return config, check_resume_changes(str(checkpoint), config_changes(stored, config.to_dict()), allow_change)
