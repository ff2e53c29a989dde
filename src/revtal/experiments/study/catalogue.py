"""The study's catalogue: its entries (named ``--set``-style overrides of the demo's recipe), the tables that group
them as the papers do, the named settings, and the base recipe every run starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from revtal.engine.config import Config
from revtal.experiments.demo import demo_config
from revtal.experiments.study.classification import AR_ENTRY_SPECS

# -------------------------------------------------------------------------------------------------- the entries

# float reversible runs: check one stage's reconstruction every 10 steps, record the error, never switch backprop
_RECORD_FLOAT_ERROR = ("backbone.monitor_every=10", "backbone.monitor_tolerance=1e30")
# LoSA's adapters are new modules trained from scratch: give them the head's learning rate, not the backbone's
_LOSA = ("backbone.mode=losa", "backbone.losa.clip_frames=8", "optim.backbone_lr=1e-3")


@dataclass(frozen=True)
class StudyEntry:
    name: str
    description: str
    overrides: tuple[str, ...] = ()
    headline: bool = False  # one of the headline comparisons: always runs the full --seeds
    task: str = "tal"  # classification: an action-recognition entry (its overrides apply to the AR base recipe)
    # a training mode: before the TAL run, re-pretrain the backbone on clip classification in this mode (Re²TAL §4)
    repretrain: str = ""


ENTRIES: tuple[StudyEntry, ...] = (
    StudyEntry("frozen", "head only on frozen pretrained features", ("backbone.mode=frozen",), headline=True),
    StudyEntry("conventional", "full end-to-end finetuning, plain autograd", ("backbone.mode=conventional",),
               headline=True),
    StudyEntry("re2", "Re²TAL: rewired to α=0, β=1, float reversible backprop",
               ("backbone.mode=re2", "backbone.backprop=reversible", *_RECORD_FLOAT_ERROR), headline=True),
    StudyEntry("scratch", "reversible (α=0.3, β=0.7) from random initialisation, exact",
               ("backbone.mode=scratch", "backbone.backprop=exact"), headline=True),
    StudyEntry("hard", "hard finetune: pretrained weights at fixed α=0.3, β=0.7, exact",
               ("backbone.mode=hard", "backbone.alpha=0.3", "backbone.beta=0.7", "backbone.backprop=exact"),
               headline=True),
    StudyEntry("dr2net_vanilla", "Dr²Net vanilla: fixed α=1, β=0.1, exact",
               ("backbone.mode=hard", "backbone.alpha=1.0", "backbone.beta=0.1", "backbone.backprop=exact")),
    StudyEntry("dr2net_vanilla_float", "Dr²Net vanilla: fixed α=1, β=0.1, float",
               ("backbone.mode=hard", "backbone.alpha=1.0", "backbone.beta=0.1", "backbone.backprop=reversible",
                *_RECORD_FLOAT_ERROR)),
    StudyEntry("dr2net", "Dr²Net dynamic (1, 0.1) → (0.3, 0.7), linear, simultaneous, exact",
               ("backbone.mode=dr2net", "backbone.backprop=exact"), headline=True),
    StudyEntry("dr2net_autograd", "Dr²Net dynamic, plain autograd through the same coupling (stores activations)",
               ("backbone.mode=dr2net", "backbone.backprop=vanilla")),
    StudyEntry("dr2net_start_1_8", "Dr²Net dynamic from (1, 1/8) instead of (1, 0.1 → 13/128), exact",
               ("backbone.mode=dr2net", "backbone.backprop=exact", "backbone.schedule.beta0=0.125")),
    StudyEntry("dr2net_drop_path", "Dr²Net dynamic, exact, stochastic depth 0.1 in the backbone",
               ("backbone.mode=dr2net", "backbone.backprop=exact", "backbone.options.drop_path_rate=0.1")),
    StudyEntry("conventional_drop_path", "conventional finetuning, stochastic depth 0.1 in the backbone",
               ("backbone.mode=conventional", "backbone.options.drop_path_rate=0.1")),
    StudyEntry("dr2net_float", "Dr²Net dynamic, float reversible backprop",
               ("backbone.mode=dr2net", "backbone.backprop=reversible", *_RECORD_FLOAT_ERROR)),
    StudyEntry("order_alpha_first", "schedule order: α first, then β (exact)",
               ("backbone.mode=dr2net", "backbone.schedule.order=alpha_first")),
    StudyEntry("order_beta_first", "schedule order: β first, then α (exact)",
               ("backbone.mode=dr2net", "backbone.schedule.order=beta_first")),
    StudyEntry("policy_exponential", "schedule policy: exponential (slow start), exact",
               ("backbone.mode=dr2net", "backbone.schedule.policy=exponential")),
    StudyEntry("policy_logarithmic", "schedule policy: logarithmic (fast start), exact",
               ("backbone.mode=dr2net", "backbone.schedule.policy=logarithmic")),
    StudyEntry("checkpoint", "conventional with per-block activation checkpointing", ("backbone.mode=checkpoint",)),
    StudyEntry("losa", "LoSA: short + long adapters, gated fusion, gates start at 0", _LOSA),
    StudyEntry("losa_wide", "LoSA with wide adapters (width = backbone width, bottleneck 1)",
               (*_LOSA, "backbone.losa.bottleneck=1.0")),
    StudyEntry("losa_no_long", "LoSA without the long-range adapters", (*_LOSA, "backbone.losa.use_long=false")),
    StudyEntry("losa_no_short", "LoSA without the short-range adapters", (*_LOSA, "backbone.losa.use_short=false")),
    StudyEntry("losa_sum", "LoSA, plain sum fusion (no gates, no projection)", (*_LOSA, "backbone.losa.fusion=sum")),
    StudyEntry("losa_gate_one", "LoSA, gates start at 1", (*_LOSA, "backbone.losa.gate_init=one")),
    StudyEntry("re2_repretrained", "Re²TAL's recipe: rewired, re-pretrained on clip classification (re2, 4 epochs), "
               "then re2 TAL", ("backbone.mode=re2", "backbone.backprop=reversible", *_RECORD_FLOAT_ERROR),
               repretrain="re2"),
    StudyEntry("conventional_repretrained", "control: the same 4 epochs of clip classification, unrewired, then "
               "conventional TAL", ("backbone.mode=conventional",), repretrain="conventional"),
    *(StudyEntry(name, description, overrides, task="classification") for name, description, overrides in AR_ENTRY_SPECS),
)
ENTRY_BY_NAME = {e.name: e for e in ENTRIES}

# named base-recipe overrides (``--setting``), applied before ``--set``
SETTINGS: dict[str, tuple[str, ...]] = {
    "miniature": (),  # the demo's dataset: 48 training and 16 validation videos
    # as many training videos (48) and 96 validation videos instead of 16: one run's mAP is measured on 6x the
    # actions at the same training cost
    "precise": ("data.synthetic.videos=144", "data.synthetic.val_fraction=0.6667"),
}


@dataclass(frozen=True)
class StudyTable:
    name: str
    title: str
    entries: tuple[str, ...]
    reference: str  # the entry every other row is compared with, seed by seed
    rows: dict = field(default_factory=dict)  # entry → row label shown in the table (default: the entry's name)
    metric: str = "average mAP (%)"  # what the entries' score is (the classification entries': top-1 accuracy)


TABLES: tuple[StudyTable, ...] = (
    StudyTable("re2tal_tab1", "Re²TAL Tab. 1 — transfer vs end-to-end vs reversible end-to-end",
               ("frozen", "conventional", "re2"), reference="conventional"),
    StudyTable("dr2net_tab2", "Dr²Net Tab. 2 — finetuning strategies for a reversible network",
               ("scratch", "hard", "dr2net_vanilla", "dr2net_vanilla_float", "dr2net", "dr2net_autograd",
                "dr2net_float"),
               reference="dr2net"),
    StudyTable("dr2net_vs_conventional", "Dr²Net vs conventional finetuning: what moves the gap",
               ("conventional", "dr2net", "dr2net_autograd", "dr2net_start_1_8", "dr2net_vanilla", "hard",
                "dr2net_drop_path", "conventional_drop_path"), reference="conventional"),
    StudyTable("dr2net_tab5_8", "Dr²Net Tab. 5/8 — coefficient schedule: order and policy",
               ("dr2net", "order_alpha_first", "order_beta_first", "policy_exponential", "policy_logarithmic"),
               reference="dr2net", rows={"dr2net": "dr2net (linear, simultaneous)"}),
    StudyTable("dr2net_tab12", "Dr²Net Tab. 12 — backbone activation memory",
               ("conventional", "checkpoint", "re2", "dr2net", "frozen"), reference="conventional"),
    StudyTable("re2tal_recipe", "Re²TAL §4 — the complete recipe: rewire, re-pretrain on the pretraining task, then TAL",
               ("conventional", "re2", "re2_repretrained", "conventional_repretrained"), reference="conventional",
               rows={"re2": "re2 (no re-pretraining)"}),
    StudyTable("dr2net_ar_tab2", "Dr²Net Tab. 2, action recognition — finetuning strategies",
               ("ar_frozen", "ar_conventional", "ar_scratch", "ar_hard", "ar_dr2net"), reference="ar_dr2net",
               metric="top-1 (%)"),
    StudyTable("dr2net_ar_tab6", "Dr²Net Tab. 6 — vanilla vs dynamic finetuning, action recognition",
               ("ar_dr2net_vanilla", "ar_dr2net"), reference="ar_dr2net", metric="top-1 (%)"),
    StudyTable("dr2net_ar_tab8", "Dr²Net Tab. 8 — α/β update order, action recognition",
               ("ar_order_alpha_first", "ar_order_beta_first", "ar_dr2net"), reference="ar_dr2net",
               rows={"ar_dr2net": "ar_dr2net (simultaneous)"}, metric="top-1 (%)"),
    StudyTable("dr2net_ar_tab11", "Dr²Net Tab. 11 — update frequency η, action recognition",
               ("ar_eta_1", "ar_dr2net", "ar_eta_5", "ar_eta_10", "ar_eta_20"), reference="ar_dr2net",
               rows={"ar_dr2net": "ar_dr2net (η = 2)"}, metric="top-1 (%)"),
    StudyTable("losa_tab4a", "LoSA Tab. 4a — adapters and their ablations",
               ("frozen", "conventional", "losa", "losa_wide", "losa_no_long", "losa_no_short", "losa_sum", "losa_gate_one"),
               reference="losa", rows={"frozen": "head only (frozen)", "conventional": "full finetune"}),
)
TABLE_BY_NAME = {t.name: t for t in TABLES}


def select_entries(spec: str | None) -> list[StudyEntry]:
    """Entries named in a comma-separated list of entry and table names (all entries when empty), in study order."""
    if not spec:
        return list(ENTRIES)
    wanted: set[str] = set()
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in ENTRY_BY_NAME:
            wanted.add(token)
        elif token in TABLE_BY_NAME:
            wanted.update(TABLE_BY_NAME[token].entries)
        else:
            raise ValueError(
                f"--entries: unknown entry or table {token!r}; entries: {', '.join(ENTRY_BY_NAME)}; "
                f"tables: {', '.join(TABLE_BY_NAME)}"
            )
    return [e for e in ENTRIES if e.name in wanted]


# ---------------------------------------------------------------------------------------------- shared settings

def base_config(out: Path, quick: bool = False, epochs: int | None = None, overrides: tuple[str, ...] = ()) -> Config:
    """The demo recipe (``quick``: a seconds-long tiny one for tests), with ``epochs`` overriding the length and
    everything tied to it (evaluation at the end, warmup, the Dr²Net schedule's end point at 60 %), then the
    ``--set``-style ``overrides`` of a study setting and of the command line."""
    values: dict = {"backbone.losa": {"clip_frames": 8}}
    if quick:  # shrink the model too, so that a test of several entries stays within seconds
        values.update({
            "backbone.options.depth": 2, "backbone.options.embed_dim": 32,
            "backbone.losa": {"clip_frames": 4, "dim": 32},
            "localizer.options.embed_dim": 32, "localizer.options.head_dim": 32, "localizer.options.num_heads": 2,
            "localizer.options.window_size": 3, "localizer.options.num_branch_blocks": 1,
            "localizer.options.regression_ranges": [[0, 2], [2, 10000]],
            "data.cache_mb": 16,
        })
    if epochs is not None:
        if epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {epochs}")
        values.update({"optim.epochs": epochs, "optim.warmup_epochs": min(1.0, epochs / 4), "eval.every": epochs,
                       "backbone.schedule.end_epoch": max(1.0, 0.6 * epochs)})
    config = demo_config(out, quick=quick).with_values(values, source="revtal study")
    return config.with_overrides(overrides, source="revtal study --setting/--set") if overrides else config


def run_overrides(entry: StudyEntry, quick: bool) -> list[str]:
    overrides = list(entry.overrides)
    if quick:  # the tiny quick video has 8 frames: LoSA clips of 4
        overrides = [o.replace("backbone.losa.clip_frames=8", "backbone.losa.clip_frames=4") for o in overrides]
    return overrides
