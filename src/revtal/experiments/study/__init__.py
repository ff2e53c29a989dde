"""``revtal study``: the papers' comparison tables in miniature, on the synthetic dataset.

One shared setting for every run: the demo's recipe (:func:`revtal.experiments.demo.demo_config`: a tiny video ViT over
32 frames × 32², 48 synthetic videos of 4 action classes, ActionFormer head), one generated dataset and one
"pretrained" backbone (:func:`revtal.experiments.demo.pretrain_backbone`, clip classification). A *study entry* is a
named set of ``--set``-style overrides of that recipe (e.g. ``backbone.mode=hard``); each entry is trained end to
end with the ordinary :class:`revtal.engine.trainer.Trainer` for several seeds k = 0, 1, …: ``train.seed`` = k
(localizer/adapter initialisation, data order, augmentation) and, with ``--pretrain-per-seed``, a backbone pretrained
with seed k too (so the spread over seeds includes the pretraining's; without it every run shares pretraining
seed 0). Every entry of one seed starts from the same checkpoint, so entries are compared on equal footing. The
entries are grouped into tables that mirror the papers':

* Re²TAL Tab. 1 — head-only (frozen) vs conventional end-to-end vs Re² reversible finetuning;
* Dr²Net Tab. 2 — finetuning strategies: reversible from scratch, hard finetuning at the end point, Dr²Net vanilla
  (fixed α=1, β=0.1), Dr²Net dynamic with exact and with float memory-free backprop;
* Dr²Net Tab. 5/8 — the coefficient schedule: order (simultaneous, α first, β first) and policy (linear,
  exponential, logarithmic);
* Dr²Net Tab. 12 — backbone activation memory: conventional vs per-block checkpointing vs Dr²Net;
* LoSA Tab. 4a — LoSA and its ablations (no long-range adapter, no short-range adapter, plain sum fusion, gates
  starting at one) beside head-only and full finetuning.

Every run writes ``OUT/results/<entry>_seed<k>.json`` as soon as it finishes (average mAP, mAP per tIoU, bytes the
backbone saved for backward on one training step, median step time, …), so an interrupted study continues with
``--resume-partial``. Runs go seed-major (every entry's seed 0 first), so a study cut short still covers every
entry. At the end ``OUT/study.json`` and ``OUT/study.md`` hold mean ± sample std over seeds per entry and table.

Float memory-free backprop (``backbone.backprop=reversible``) entries run with the reconstruction monitor in
*record-only* mode (``monitor_tolerance`` = 1e30: never falls back, but logs the measured relative reconstruction
error every ``monitor_every`` steps), so "float" really means float and the result says how accurate it was.

The package: :mod:`~revtal.experiments.study.catalogue` (entries, tables, settings, the base recipe),
:mod:`~revtal.experiments.study.runner` (the runs), :mod:`~revtal.experiments.study.statistics` (summaries, paired
differences, noise floor) and :mod:`~revtal.experiments.study.report` (tables and plot); the names are re-exported
here.
"""

from revtal.experiments.study.catalogue import (ENTRIES, ENTRY_BY_NAME, SETTINGS, TABLE_BY_NAME, TABLES, StudyEntry,
                                                StudyTable, base_config, run_overrides, select_entries)
from revtal.experiments.study.report import format_noise_floor, format_tables, plot_differences
from revtal.experiments.study.runner import (StudyOptions, load_results, pretrained_checkpoint, result_path, run_entry,
                                             run_study)
from revtal.experiments.study.statistics import (NOISE_PROBES, PairedDifference, noise_floor, paired_difference,
                                                 summarize, t_quantile_975, table_differences)
