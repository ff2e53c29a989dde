"""Issue 28: the reference ActionFormer and revtal's on one batch, step by step, with the same weights.

    PYTHONPATH=src python docs/experiments/reference_one_batch.py FEATURE_SET_DIR NUM_CLASSES

FEATURE_SET_DIR is a set written by ``revtal bench localizer`` (``generate_feature_set``); needs the optional
``actionformer`` package. The reference model's weights are copied into revtal's ActionFormer by key (same shapes,
1,679,245 parameters each); one training batch of two videos comes from the reference's own dataset class (its
crop), padded as the reference pads (576 steps); drop-path draws are switched off on both sides (LayerScale stays).
Printed: the gap per pyramid level in class logits and offsets, in the targets, the losses, the largest gradient
gaps, and the detections of one validation video with and without revtal's per-class segment voting.
"""
import random, re, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from revtal.experiments.reference_localizer import reference_config
from actionformer.datasets import make_dataset
from actionformer.modeling import make_meta_arch
from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig
from revtal.localizers.postprocess import PostprocessConfig

root = Path(sys.argv[1]); classes = int(sys.argv[2]); droppath = 0.1  # the recipe's: LayerScale on both sides
cfg = reference_config(root, classes, 64, 12, 3, 4e-4)
cfg["model"]["train_cfg"]["droppath"] = droppath
torch.manual_seed(0); random.seed(0); np.random.seed(0)
ref = make_meta_arch(cfg["model_name"], **cfg["model"])
ours = ActionFormer(64, classes, ActionFormerConfig(embed_dim=128, head_dim=128, drop_path=droppath))

def our_key(k):
    k = k.replace("backbone.embd_norm.", "embed_norms.").replace("backbone.embd.", "embed_convs.")
    k = k.replace("backbone.", "").replace(".ln1.", ".norm_attn.").replace(".ln2.", ".norm_mlp.")
    k = k.replace("drop_path_attn.scale", "scale_attn.scale").replace("drop_path_mlp.scale", "scale_mlp.scale")
    k = k.replace("neck.fpn_norms.", "neck_norms.").replace("cls_head.head.", "cls_head.convs.").replace("cls_head.norm.", "cls_head.norms.")
    k = k.replace("reg_head.head.", "reg_head.convs.").replace("reg_head.norm.", "reg_head.norms.")
    k = k.replace("cls_head.cls_head.", "cls_head.output.").replace("reg_head.offset_head.", "reg_head.output.")
    return k
state = ours.state_dict()
scales = torch.zeros(6)
for k, v in ref.state_dict().items():
    m = re.match(r"reg_head\.scale\.(\d)\.scale", k)
    if m:
        scales[int(m.group(1))] = v; continue
    ok = our_key(k)
    assert ok in state and state[ok].shape == v.shape, (k, ok)
    state[ok] = v.clone()
state["reg_scales"] = scales
missing = set(ours.state_dict()) - {our_key(k) for k in ref.state_dict()} - {"reg_scales", "loss_normalizer"}
assert not missing, missing
ours.load_state_dict(state)
# the drop-path draws are random: switch them off on both sides (the LayerScale stays)
for module in ref.modules():
    if hasattr(module, "drop_prob"): module.drop_prob = 0.0
for module in ours.modules():
    if type(module).__name__ == "DropPath": module.p = 0.0
print("weights copied:", sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in ref.parameters()))

train_set = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
random.seed(1)
video_list = [train_set[0], train_set[1]]
ref.train(); ours.train()
# reference internals
inputs, masks = ref.preprocessing(video_list)
feats, fmasks = ref.backbone(inputs, masks)
fpn_feats, fpn_masks = ref.neck(feats, fmasks)
points = ref.point_generator(fpn_feats)
r_cls = [x.permute(0, 2, 1) for x in ref.cls_head(fpn_feats, fpn_masks)]
r_off = [x.permute(0, 2, 1) for x in ref.reg_head(fpn_feats, fpn_masks)]
r_masks = [x.squeeze(1) for x in fpn_masks]
gt_segs = [x["segments"] for x in video_list]; gt_labels = [x["labels"] for x in video_list]
r_tcls, r_treg = ref.label_points(points, gt_segs, gt_labels)
r_loss = ref.losses(r_masks, r_cls, r_off, r_tcls, r_treg)
# ours on the same padded batch
out = ours(inputs, masks[:, 0])
o_loss = ours.loss(out, gt_segs, gt_labels)
o_tcls, o_treg = ours.targets(out, gt_segs, gt_labels)
def gap(a, b): return float((a - b).detach().abs().max())
print("points", gap(torch.cat(points), torch.cat(out.points)))
for l in range(6):
    print(f"level {l}: masks equal {bool((r_masks[l] == out.masks[l]).all())}, logits {gap(r_cls[l], out.cls_logits[l]):.2e}, offsets {gap(r_off[l], out.offsets[l]):.2e}")
print("cls targets", gap(torch.stack(r_tcls), o_tcls), "reg targets", gap(torch.stack(r_treg), o_treg))
print("losses ref", {k: float(v) for k, v in r_loss.items()}, "ours", {k: float(v) for k, v in o_loss.items() if k != "num_positive"})
r_loss["final_loss"].backward(); o_loss["total"].backward()
rg = {our_key(k): p.grad for k, p in ref.named_parameters() if p.grad is not None and "scale." not in k}
worst = max(((k, gap(g, dict(ours.named_parameters())[k].grad) / (g.abs().max().item() + 1e-12)) for k, g in rg.items()), key=lambda t: t[1])
print("largest relative gradient gap", worst)
gaps = sorted(((gap(g, dict(ours.named_parameters())[k].grad), float(g.abs().max()), k) for k, g in rg.items()), reverse=True)[:6]
print("largest absolute gradient gaps (gap, |grad| max, name):", [(f"{a:.2e}", f"{b:.2e}", k) for a, b, k in gaps])
print("reg scale grads ref", [float(p.grad) for k, p in ref.named_parameters() if "reg_head.scale" in k], "ours", ours.reg_scales.grad.tolist())
# inference on one validation video, the same weights
val_set = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
ref.eval(); ours.eval()
with torch.no_grad():
    item = val_set[0]
    r_det = ref([item])[0]
    x = item["feats"][None]; m = torch.ones(1, x.shape[2], dtype=torch.bool)
    for voting in (0.7, None):
        det = ours.predict(ours(x, m), PostprocessConfig(voting_threshold=voting))[0]
        segs = (det["segments"] + 0.5).clamp(0, item["duration"])
        n = min(len(segs), len(r_det["segments"]), 20)
        print(f"voting {voting}: ours {len(segs)} dets, ref {len(r_det['segments'])}; top-20 max seg gap {gap(segs[:n], r_det['segments'][:n]):.3e}, score gap {gap(det['scores'][:n], r_det['scores'][:n]):.3e}, labels equal {bool((det['labels'][:n] == r_det['labels'][:n]).all())}")
