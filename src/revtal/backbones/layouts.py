"""Checkpoint layouts: where a backbone sits inside the files people download, and what its keys are called there.

Every layout is data in one registry, not a loader of its own:

* :data:`NESTINGS` — the larger models a backbone is saved inside: an OpenTAD detector
  (``backbone.model.backbone.``), a revtal training run (``extractor.``, LoSA: ``extractor.backbone.``), an
  mmaction2 recognizer or the Video-Swin-Transformer release (``backbone.``, with ``cls_head``), a revtal
  :class:`~revtal.backbones.backbone.VideoBackbone` (``net.``). The keys outside the backbone are dropped and
  reported. Wrappers that only add a path segment — ``module.`` (DataParallel / DDP) and ``_orig_mod.``
  (``torch.compile``) — are removed wherever they appear.
* :data:`NAMINGS` — per backbone family, the key names of the code bases that publish weights, as an ordered list
  of ``(pattern, replacement)`` renames into the network revtal builds, the keys dropped on purpose (classifier
  heads, decoders) and the buffers the network computes itself (``relative_position_index``,
  ``num_batches_tracked`` of checkpoints older than it), plus an optional value conversion (Swin 2-D → 3-D
  inflation, VideoMAE's separate q/v biases).

:func:`prepare` applies both to a raw state dict; :func:`identify` names the layout of any state dict, so a
checkpoint given to the wrong backbone gets "an official Video Swin checkpoint: use backbone swin3d_t, ..." instead
of a list of keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

StateDict = dict[str, Tensor]


def select_prefixed(state_dict: StateDict, prefixes: Iterable[str]) -> tuple[StateDict, list[str]]:
    """For each prefix in turn: if some keys carry it, keep only those (prefix removed) and drop the others.

    Returns the selected state dict and the dropped keys (original names)."""
    dropped: list[str] = []
    for prefix in prefixes:
        if not any(k.startswith(prefix) for k in state_dict):
            continue
        dropped += [k for k in state_dict if not k.startswith(prefix)]
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict, dropped


def drop_matching(state_dict: StateDict, patterns: Iterable[str]) -> tuple[StateDict, list[str]]:
    """Remove keys matching any regular expression in ``patterns`` (``re.match``); returns (kept, dropped)."""
    compiled = [re.compile(p) for p in patterns]
    dropped = [k for k in state_dict if any(c.match(k) for c in compiled)]
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}, dropped


Rename = tuple[str, "str | Callable[[re.Match], str]"]


@dataclass(frozen=True)
class Nesting:
    prefix: str
    origin: str  # what kind of file nests the backbone there


# tried in this order, each applied when some key carries it (select_prefixed); OpenTAD's before "backbone.",
# which its prefix contains
NESTINGS: tuple[Nesting, ...] = (
    Nesting("backbone.model.backbone.", "an OpenTAD end-to-end detector"),
    Nesting("extractor.", "a revtal training run"),
    Nesting("backbone.", "an mmaction2 / Video-Swin-Transformer recognizer (or a revtal LoSA extractor)"),
    Nesting("net.", "a revtal VideoBackbone"),
)

# path segments that wrap a module without changing it: (pattern, replacement, what it is)
_PATH_WRAPPERS = ((re.compile(r"(^|\.)_orig_mod\."), r"\1", "_orig_mod. (torch.compile)"),
                  (re.compile(r"^(module\.)+"), "", "module. (DataParallel / DDP)"))


@dataclass(frozen=True)
class Naming:
    """The key names one code base gives a backbone family, and how they become revtal's."""

    name: str  # "official Video Swin (Video-Swin-Transformer / mmaction2)"
    family: str  # the VideoBackbone family it loads into: swin3d | slowfast | vit | resnet3d
    backbones: str  # what to build for it, for messages: "swin3d_t, swin3d_s or swin3d_b"
    matches: Callable[[StateDict], bool]  # whether a (de-nested) state dict has these names
    prefixes: tuple[str, ...] = ()  # family-specific nesting (VideoMAE pretraining: encoder.)
    dropped: tuple[str, ...] = ()  # regular expressions (re.match, before renaming) of keys left out on purpose
    renames: tuple[Rename, ...] = ()  # applied in order with re.sub
    recomputed: tuple[str, ...] = ()  # keys (after renaming) the network computes itself: the file's are ignored
    convert: Callable[[StateDict, Mapping[str, Tensor] | None], StateDict] | None = None  # value changes
    notes: tuple[str, ...] = ()  # said when the layout is loaded
    size_of: Callable[[StateDict], str | None] | None = None  # the registered backbone of these (renamed) weights


def _swin_size(sd: StateDict) -> str | None:
    """swin3d_t / _s / _b from the embedding width and the depth of the third stage (torchvision names)."""
    weight = sd.get("patch_embed.proj.weight")
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith("features.4.") and k.count(".") > 3}
    sizes = {(96, 6): "swin3d_t", (96, 18): "swin3d_s", (128, 18): "swin3d_b"}
    return sizes.get((weight.shape[0], len(blocks))) if weight is not None else None


def _slowfast_size(sd: StateDict) -> str | None:
    blocks = {k.split(".")[4] for k in sd if k.startswith("blocks.3.multipathway_blocks.0.res_blocks.")}
    return {6: "slowfast_r50", 23: "slowfast_r101"}.get(len(blocks))


def _vit_size(sd: StateDict) -> str | None:
    weight = sd.get("patch_embed.proj.weight")
    sizes = {384: "vit_s_video", 768: "vit_b_video", 1024: "vit_l_video", 1408: "vit_g_video"}
    return sizes.get(weight.shape[0]) if weight is not None else None


def _any_key(pattern: str) -> Callable[[StateDict], bool]:
    compiled = re.compile(pattern)
    return lambda sd: any(compiled.search(k) for k in sd)


# --------------------------------------------------------------------------------------------------- Video Swin
# official / mmaction2 SwinTransformer3D: layers.i.blocks.j, layers.i.downsample (after stage i), mlp.fc1/fc2;
# torchvision SwinTransformer3d: features.2i.j (stage i), features.2i+1 (its patch merging), mlp.0 / mlp.3.
# mmaction2 1.x calls the final norm norm3 (the norm of its out_indices=(3,) output).
_SWIN_RENAMES: tuple[Rename, ...] = (
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m[1]) + 1}."),
    (r"\.mlp\.fc1\.", ".mlp.0."),
    (r"\.mlp\.fc2\.", ".mlp.3."),
    (r"^norm3\.", "norm."),
)
_SWIN_DROPPED = (r"cls_head\.", r"head\.", r".*\.attn_mask$")


def _is_swin(sd: StateDict, kernel_dims: int) -> bool:
    weight = sd.get("patch_embed.proj.weight")
    return weight is not None and weight.ndim == kernel_dims and any(k.startswith("layers.") for k in sd)


def _window_3d(index_numel: int, table_rows: int) -> tuple[int, int]:
    """(temporal, spatial) window sizes of a 3-D window (wd, w, w) with wd·w² positions and a (2wd-1)(2w-1)² table."""
    for wd in range(1, index_numel + 1):
        w = math.isqrt(index_numel // wd)
        if wd * w * w == index_numel and (2 * wd - 1) * (2 * w - 1) ** 2 == table_rows:
            return wd, w
    raise ValueError(f"cannot infer the 3-D window from {index_numel} positions and {table_rows} bias rows")


def inflate_swin_2d(sd: StateDict, target: Mapping[str, Tensor] | None) -> StateDict:
    """An ImageNet Swin (2-D) state dict, renamed, → Video Swin, as the Video Swin paper initialises from ImageNet:
    the patch embedding (D, C, p, p) is repeated over the temporal patch size τ and divided by τ; each block's
    relative-position bias table ((2w-1)², heads) is resized bicubically to the 3-D window's spatial size if it
    differs, then repeated for each of the 2·wd - 1 temporal offsets (the temporal offset is the slowest index of
    the 3-D table)."""
    if target is None:
        raise ValueError("inflating a 2-D Swin checkpoint needs the video network it goes into")
    out = dict(sd)
    kernel = target["patch_embed.proj.weight"]
    tau = kernel.shape[2]
    out["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].unsqueeze(2).repeat(1, 1, tau, 1, 1) / tau
    for key, table in sd.items():
        if not key.endswith("relative_position_bias_table") or key not in target:
            continue
        rows_3d = target[key].shape[0]
        wd, w = _window_3d(target[key.replace("bias_table", "index")].shape[0], rows_3d)
        side_2d, heads = math.isqrt(table.shape[0]), table.shape[1]
        if side_2d != 2 * w - 1:
            grid = table.T.reshape(1, heads, side_2d, side_2d)
            grid = F.interpolate(grid, size=(2 * w - 1, 2 * w - 1), mode="bicubic", align_corners=False)
            table = grid.reshape(heads, -1).T
        out[key] = table.repeat(2 * wd - 1, 1)
    return out


# ----------------------------------------------------------------------------------------------------- SlowFast
# facebookresearch/SlowFast names → pytorchvideo create_slowfast (blocks.0: the two stems and the first fusion,
# blocks.1..4: res2..res5 with the fusion after each but the last). Stage k of SlowFast is blocks.{k-1}.
_SLOWFAST_RENAMES: tuple[Rename, ...] = (
    (r"^s1\.pathway(\d)_stem\.conv\.", r"blocks.0.multipathway_blocks.\1.conv."),
    (r"^s1\.pathway(\d)_stem\.bn\.", r"blocks.0.multipathway_blocks.\1.norm."),
    (r"^s(\d)_fuse\.conv_f2s\.", lambda m: f"blocks.{int(m[1]) - 1}.multipathway_fusion.conv_fast_to_slow."),
    (r"^s(\d)_fuse\.bn\.", lambda m: f"blocks.{int(m[1]) - 1}.multipathway_fusion.norm."),
    (r"^s(\d)\.pathway(\d)_res(\d+)\.",
     lambda m: f"blocks.{int(m[1]) - 1}.multipathway_blocks.{m[2]}.res_blocks.{m[3]}."),
    (r"\.branch1\.", ".branch1_conv."),
    (r"\.branch1_bn\.", ".branch1_norm."),
    (r"\.branch2\.([abc])\.", r".branch2.conv_\1."),
    (r"\.branch2\.([abc])_bn\.", r".branch2.norm_\1."),
)

# Caffe2 blob names of the SlowFast .pkl models → facebookresearch names (the fast pathway's blobs start with t_;
# the fast→slow fusion after stage k is named after the fast pathway's last block of that stage)
_CAFFE2_RENAMES: tuple[Rename, ...] = (
    (r"^t_pool1_subsample_", "s1_fuse.conv_f2s_"),
    (r"^t_res(\d+)_\d+_branch2c_bn_subsample_", r"s\1_fuse.conv_f2s_"),
    (r"^s(\d)_fuse\.conv_f2s_bn_", r"s\1_fuse.bn_"),
    (r"^(t_)?res_conv1_bn_", lambda m: f"s1.pathway{1 if m[1] else 0}_stem.bn_"),
    (r"^(t_)?conv1_", lambda m: f"s1.pathway{1 if m[1] else 0}_stem.conv_"),
    (r"^(t_)?res(\d+)_(\d+)_branch2([abc])_", lambda m: f"s{m[2]}.pathway{1 if m[1] else 0}_res{m[3]}.branch2.{m[4]}_"),
    (r"^(t_)?res(\d+)_(\d+)_branch1_", lambda m: f"s{m[2]}.pathway{1 if m[1] else 0}_res{m[3]}.branch1_"),
    (r"([._])bn_s$", r"\1bn.weight"),
    (r"([._])bn_b$", r"\1bn.bias"),
    (r"([._])bn_rm$", r"\1bn.running_mean"),
    (r"([._])bn_riv$", r"\1bn.running_var"),
    (r"_w$", ".weight"),
    (r"_b$", ".bias"),
)

_BN_COUNTER = (r".*num_batches_tracked$",)  # absent from checkpoints older than it (and from Caffe2 ones)


# ------------------------------------------------------------------------------------------------------ VideoMAE
_VIDEOMAE_RENAMES = ((re.compile(r"^(blocks\.\d+\.)gamma_1$"), r"\1ls1.gamma"),
                     (re.compile(r"^(blocks\.\d+\.)gamma_2$"), r"\1ls2.gamma"))


def videomae_to_timm(state_dict: StateDict) -> StateDict:
    """VideoMAE / VideoMAEv2 block keys → timm Block keys (after prefix selection and dropping).

    ``attn.q_bias`` + ``attn.v_bias`` → ``attn.qkv.bias`` = [q_bias, 0, v_bias]; layer scale ``gamma_1/2`` →
    ``ls1/ls2.gamma``. Keys already in timm form pass through, so timm-format checkpoints load too.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        match = re.match(r"^(blocks\.\d+\.attn\.)(q_bias|v_bias)$", key)
        if match:
            if match.group(2) == "q_bias":
                prefix = match.group(1)
                v_bias = state_dict.get(prefix + "v_bias")
                if v_bias is None:
                    raise ValueError(f"checkpoint has {key} but no {prefix}v_bias")
                out[prefix + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
            continue
        for pattern, replacement in _VIDEOMAE_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


# HuggingFace transformers VideoMAE layer names → timm names (within ``encoder.layer.N.``)
_HF_LAYER_RENAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def hf_videomae_to_timm(state_dict: StateDict) -> StateDict:
    """A HuggingFace ``VideoMAEModel`` / ``VideoMAEForVideoClassification`` state dict → this module's keys.

    Separate query/key/value weights are stacked into ``qkv.weight``; biases follow :func:`videomae_to_timm`.
    """
    sd = {k.removeprefix("videomae."): v for k, v in state_dict.items()}
    out: StateDict = {}
    for key, value in sd.items():
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(("layernorm.", "fc_norm.")):
            out[key.replace("layernorm.", "norm.", 1)] = value
        elif key.startswith("classifier."):
            out["head." + key.split(".", 1)[1]] = value
        elif key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer."):].split(".", 1)
            block = f"blocks.{index}."
            if rest.startswith("attention.attention."):
                name = rest[len("attention.attention."):]
                if name == "query.weight":
                    attention = f"encoder.layer.{index}.attention.attention."
                    qkv = [sd[f"{attention}{p}.weight"] for p in ("query", "key", "value")]
                    out[block + "attn.qkv.weight"] = torch.cat(qkv)
                elif name in ("q_bias", "v_bias"):
                    out[block + "attn." + name] = value
                elif name in ("query.bias", "value.bias"):  # transformers ≥ 5 keeps them on the linear layers
                    out[block + "attn." + name[0] + "_bias"] = value
                continue
            for hf_name, timm_name in _HF_LAYER_RENAMES.items():
                if rest.startswith(hf_name + "."):
                    out[block + timm_name + rest[len(hf_name):]] = value
                    break
            else:
                out[key] = value
        else:
            out[key] = value
    return videomae_to_timm(out)



def _videomae_convert(sd: StateDict, target: Mapping[str, Tensor] | None) -> StateDict:
    return videomae_to_timm(sd)


def _hf_videomae_convert(sd: StateDict, target: Mapping[str, Tensor] | None) -> StateDict:
    return {k: v for k, v in hf_videomae_to_timm(sd).items() if not k.startswith("head.")}


_VIDEOMAE_DROPPED = (r"head\.", r"head_dropout\.", r"fc_dropout\.", r"decoder\.", r"encoder_to_decoder\.",
                     r"mask_token$")

NAMINGS: tuple[Naming, ...] = (
    # ---- Video Swin
    Naming("torchvision Video Swin", "swin3d", "swin3d_t, swin3d_s or swin3d_b", _any_key(r"^features\.\d+\.\d+\.attn\.relative_position_bias_table$"),
           dropped=(r"head\.",), recomputed=(r".*relative_position_index$",), size_of=_swin_size),
    Naming("official Video Swin (Video-Swin-Transformer / mmaction2)", "swin3d", "swin3d_t, swin3d_s or swin3d_b",
           lambda sd: _is_swin(sd, 5), dropped=_SWIN_DROPPED, renames=_SWIN_RENAMES,
           recomputed=(r".*relative_position_index$",), size_of=_swin_size,
           notes=("the Kinetics classifier (cls_head) is dropped", "relative_position_index is recomputed")),
    Naming("ImageNet Swin (2-D, microsoft/Swin-Transformer)", "swin3d", "swin3d_t, swin3d_s or swin3d_b",
           lambda sd: _is_swin(sd, 4), dropped=_SWIN_DROPPED, renames=_SWIN_RENAMES,
           recomputed=(r".*relative_position_index$",), convert=inflate_swin_2d, size_of=_swin_size,
           notes=("inflated to 3-D as in the Video Swin paper (patch embedding repeated over time / its temporal "
                  "size; relative-position tables repeated over the temporal offsets)",
                  "the ImageNet classifier (head) is dropped")),
    # ---- SlowFast
    Naming("pytorchvideo SlowFast", "slowfast", "slowfast_r50 or slowfast_r101",
           _any_key(r"^blocks\.0\.multipathway_blocks\.\d\.conv\.weight$"), dropped=(r"blocks\.6\.",),
           size_of=_slowfast_size),
    Naming("facebookresearch SlowFast (.pyth)", "slowfast", "slowfast_r50 or slowfast_r101",
           _any_key(r"^s1\.pathway0_stem\.conv\.weight$"), dropped=(r"head\.",), renames=_SLOWFAST_RENAMES,
           size_of=_slowfast_size,
           notes=("the Kinetics classifier (head.projection) is dropped",)),
    Naming("Caffe2 SlowFast (.pkl blobs)", "slowfast", "slowfast_r50 or slowfast_r101",
           _any_key(r"^(t_)?res_conv1_bn_riv$|^t_pool1_subsample_w$"),
           dropped=(r".*_momentum$", r"pred_", r"(lr|model_iter|iter)$"),
           renames=_CAFFE2_RENAMES + _SLOWFAST_RENAMES, size_of=_slowfast_size,
           notes=("the Kinetics classifier (pred_w, pred_b) and the optimizer's momentum blobs are dropped",)),
    # ---- video ViT (VideoMAE / VideoMAEv2)
    Naming("HuggingFace transformers VideoMAE", "vit", "vit_{s,b,l,g}_video",
           _any_key(r"^(videomae\.)?(encoder\.layer\.|embeddings\.patch_embeddings\.)"),
           dropped=(r"decoder\.", r"encoder_to_decoder\.", r"mask_token$"), convert=_hf_videomae_convert,
           size_of=_vit_size),
    Naming("mmaction2 / OpenTAD VideoMAE ViT", "vit", "vit_{s,b,l,g}_video",
           _any_key(r"^patch_embed\.projection\.|\.mlp\.layers\.0\.0\."),
           dropped=_VIDEOMAE_DROPPED + (r"pos_embed$", r"blocks\.\d+\.adapter\."),
           renames=((r"^patch_embed\.projection\.", "patch_embed.proj."), (r"\.mlp\.layers\.0\.0\.", ".mlp.fc1."),
                    (r"\.mlp\.layers\.1\.", ".mlp.fc2.")),
           convert=_videomae_convert, size_of=_vit_size,
           notes=("its fixed sinusoidal pos_embed buffer is recomputed", "OpenTAD adapters (AdaTAD), if any, are "
                  "dropped: they are not part of the backbone")),
    Naming("VideoMAE / VideoMAEv2", "vit", "vit_{s,b,l,g}_video",
           _any_key(r"^(encoder\.)?blocks\.\d+\.(attn\.qkv\.weight|mlp\.fc1\.weight)$"), prefixes=("encoder.",),
           dropped=_VIDEOMAE_DROPPED, convert=_videomae_convert, size_of=_vit_size),
    # ---- torchvision video ResNets
    Naming("torchvision video ResNet", "resnet3d", "r3d_18, mc3_18 or r2plus1d_18",
           _any_key(r"^stem\.0\.weight$|^layer1\.0\.conv1\.0\.0\.weight$"), dropped=(r"fc\.",)),
)

# layouts recognised only to say what they are (no mapping is written for them)
FOREIGN: tuple[tuple[str, str, Callable[[StateDict], bool]], ...] = (
    ("mmaction2 SlowFast (ResNet3dSlowFast)", "not supported: convert it with mmaction2 or use a facebookresearch "
     "SlowFast .pyth / pytorchvideo checkpoint with backbone slowfast_r50 or slowfast_r101",
     _any_key(r"^slow_path\.conv1\.conv\.weight$")),
    ("timm image ViT", "inflate it: backbone.options.image_checkpoint=PATH with a vit_*_video backbone",
     lambda sd: "cls_token" in sd and any(k.startswith("blocks.0.") for k in sd)),
)


def strip_path_wrappers(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, list[str]]:
    """Remove ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) path segments; returns the
    state dict and the wrappers found."""
    found: list[str] = []
    out: StateDict = {}
    for key, value in state_dict.items():
        for pattern, replacement, what in _PATH_WRAPPERS:
            stripped = pattern.sub(replacement, key)
            if stripped != key and what not in found:
                found.append(what)
            key = stripped
        out[key] = value
    return out, found


def denest(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, list[str], list[str]]:
    """The backbone's keys out of whatever holds it: (state dict, dropped keys, what held it)."""
    sd, wrappers = strip_path_wrappers(state_dict)
    origins = list(wrappers)
    dropped: list[str] = []
    for nesting in NESTINGS:
        if any(k.startswith(nesting.prefix) for k in sd):
            sd, gone = select_prefixed(sd, (nesting.prefix,))
            dropped += gone
            origins.append(nesting.origin)
    return sd, dropped, origins


def naming_of(state_dict: StateDict, family: str | None = None) -> tuple[Naming | None, StateDict, list[str]]:
    """The first naming (of ``family``, or of any) whose keys ``state_dict`` has; with the state dict selected by
    that naming's own prefixes and the keys this drops."""
    for naming in NAMINGS:
        if (family is None or naming.family == family) and naming.matches(state_dict):
            selected, dropped = select_prefixed(state_dict, naming.prefixes)
            return naming, selected, dropped
    return None, state_dict, []


@dataclass
class Prepared:
    state_dict: StateDict
    dropped: list[str] = field(default_factory=list)
    layout: str = ""  # "official Video Swin (...), inside an mmaction2 ... recognizer"
    notes: list[str] = field(default_factory=list)


def rename_keys(state_dict: StateDict, renames: tuple[Rename, ...]) -> StateDict:
    compiled = [(re.compile(p), r) for p, r in renames]
    out: StateDict = {}
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        if key in out:
            raise ValueError(f"two checkpoint keys map to {key!r}: the layout's renames are ambiguous")
        out[key] = value
    return out


def prepare(state_dict: Mapping[str, Tensor], family: str, target: Mapping[str, Tensor] | None = None) -> Prepared:
    """A raw state dict → the keys and values of a ``family`` network (``target``: that network's state dict, for
    recomputed buffers and shape-dependent conversions; without it they are left out)."""
    sd, dropped, origins = denest(state_dict)
    naming, sd, gone = naming_of(sd, family)
    dropped += gone
    notes: list[str] = []
    if naming is not None:
        sd, gone = drop_matching(sd, naming.dropped)
        dropped += gone
        sd = rename_keys(sd, naming.renames)
        if naming.convert is not None:
            sd = naming.convert(sd, target)
        recomputed = [re.compile(p) for p in naming.recomputed]
        sd = {k: v for k, v in sd.items() if not any(p.match(k) for p in recomputed)}
        notes = list(naming.notes)
    if target is not None:
        # the network's own buffers: those it recomputes, and BatchNorm counters the file predates
        recomputed = [re.compile(p) for p in (naming.recomputed if naming else ()) + _BN_COUNTER]
        filled = [k for k in target if k not in sd and any(p.match(k) for p in recomputed)]
        sd.update({k: target[k] for k in filled})
        if any(k.endswith("num_batches_tracked") for k in filled):
            notes.append("BatchNorm num_batches_tracked counters the file lacks start at the network's value")
    layout = (naming.name if naming else f"unrecognised {family} layout") + (
        f", inside {' / '.join(origins)}" if origins else "")
    return Prepared(sd, dropped, layout, notes)


def identify(state_dict: Mapping[str, Tensor]) -> tuple[str, str] | None:
    """(what the checkpoint is, what to do with it) for a known layout of another code base, else None (revtal's
    own files are told apart by the mismatch itself: another mode, other sizes)."""
    sd, _, origins = denest(state_dict)
    if any(n.prefix in ("extractor.", "net.") and n.origin in origins for n in NESTINGS):
        return None
    naming, sd, _ = naming_of(sd)
    where = f" inside {' / '.join(origins)}" if origins else ""
    if naming is not None:
        size = None
        if naming.size_of is not None:
            try:
                size = naming.size_of(rename_keys(sd, naming.renames))
            except (ValueError, IndexError):  # keys too unusual to size: name the family only
                size = None
        what = f"a{'n' if naming.name[0] in 'aeiouAEIOU' else ''} {naming.name} checkpoint{where}"
        return (f"{what} of {size}", f"use backbone {size}") if size else (what, f"use backbone {naming.backbones}")
    for name, advice, matches in FOREIGN:
        if matches(sd):
            return f"a{'n' if name[0] in 'aeiouAEIOU' else ''} {name} checkpoint{where}", advice
    return None


__all__ = ["hf_videomae_to_timm", "videomae_to_timm", "NAMINGS", "NESTINGS", "Naming", "Nesting", "Prepared", "denest", "identify", "inflate_swin_2d",
           "naming_of", "prepare", "rename_keys", "strip_path_wrappers"]
