"""VideoMAE-style video vision transformer.

A clip (B, C, T, H, W) is cut into tubelets of ``tubelet_size`` frames × ``patch_size``² pixels by one Conv3d; the
resulting grid of T'·H'·W' tokens (T' = T / tubelet, flattened time-major: t, then row, then column) goes through
pre-norm transformer blocks with *joint* space-time attention (every token attends to every other). The blocks are
timm's own :class:`timm.models.vision_transformer.Block` held in ``self.blocks`` (an ``nn.Sequential``), so
``revtal.convert`` converts this model through the traced timm ``Block`` rule (:mod:`revtal.reversible.families`).

Layout follows VideoMAE / VideoMAEv2 so their checkpoints load with ``strict=True``:

* position embeddings: ``"sincos"`` — VideoMAE's fixed 1-D sinusoidal table over the flattened token index, a
  non-persistent buffer (VideoMAE checkpoints do not store it); or ``"learned"`` — a parameter ``pos_embed``;
* no class token; ``use_mean_pooling=True`` (VideoMAE finetuning layout): ``norm`` is the identity and ``fc_norm``
  normalises pooled features; ``use_mean_pooling=False`` (VideoMAE pretraining encoder layout): ``norm`` normalises
  every token and there is no ``fc_norm``;
* the classification head is not part of the backbone (see :class:`revtal.backbones.classifier.ClipClassifier`).

VideoMAE attention keeps a bias-free ``qkv`` projection plus separate ``q_bias`` and ``v_bias``; timm's attention has
one ``qkv.bias``. :func:`videomae_to_timm` concatenates ``[q_bias, 0, v_bias]``. A key bias cannot change attention
(softmax is invariant to adding q·b_k to every logit of a query), so the zero k bias stays functionally inert; its
gradient is zero up to rounding.
"""

from __future__ import annotations

import math
import re
from functools import partial
import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from revtal.backbones.weights import StateDict

POS_EMBED_TYPES = ("sincos", "learned")

# size name: (embed_dim, depth, num_heads, mlp_ratio) — VideoMAE S/B/L, VideoMAEv2 giant, and a tiny one for tests
VIT_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (64, 4, 4, 4.0),
    "s": (384, 12, 6, 4.0),
    "b": (768, 12, 12, 4.0),
    "l": (1024, 24, 16, 4.0),
    "g": (1408, 40, 16, 48 / 11),
}


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's fixed table (1, num_positions, dim): channel 2i is sin(p / 10000^(2i/dim)), 2i+1 its cosine."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angle = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)[None]


class TubeletEmbed(nn.Module):
    """Non-overlapping tubelets → tokens: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int, in_chans: int, dim: int):
        super().__init__()
        if num_frames % tubelet_size or img_size % patch_size:
            raise ValueError(
                f"num_frames={num_frames} must be a multiple of tubelet_size={tubelet_size} and img_size={img_size} "
                f"a multiple of patch_size={patch_size}"
            )
        self.num_frames, self.img_size = num_frames, img_size
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = math.prod(self.grid_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim != 5:
            raise ValueError(f"video ViT expects a clip of shape (B, C, T, H, W), got shape {tuple(video.shape)}")
        _, c, t, h, w = video.shape
        if (t, h, w) != (self.num_frames, self.img_size, self.img_size) or c != self.proj.in_channels:
            raise ValueError(
                f"video ViT was built for clips of {self.proj.in_channels}×{self.num_frames}×{self.img_size}×"
                f"{self.img_size} (C×T×H×W), got {c}×{t}×{h}×{w}; build it with matching num_frames/img_size"
            )
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoViT(nn.Module):
    def __init__(
        self,
        *,
        num_frames: int = 16,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pos_embed: str = "sincos",
        use_mean_pooling: bool = True,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if pos_embed not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_TYPES}, got {pos_embed!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = self.num_features = embed_dim
        self.pos_embed_type = pos_embed
        self.use_mean_pooling = use_mean_pooling
        self.patch_embed = TubeletEmbed(num_frames, img_size, patch_size, tubelet_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", sinusoid_table(num_patches, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        # linearly increasing drop-path rates, in Python: a model built on the meta device or under fake tensors
        # has no values to read back
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    init_values=init_values,
                    drop_path=drop_path[i],
                    norm_layer=norm_layer,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else nn.Identity()
        self.apply(_init_weights)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(T', H', W'): the token grid of one clip."""
        return self.patch_embed.grid_size

    @property
    def temporal_stride(self) -> int:
        return self.patch_embed.tubelet_size

    def embed(self, video: Tensor) -> Tensor:
        """Clip → tokens entering the first block: tubelet embedding + position embedding (+ dropout)."""
        tokens = self.patch_embed(video)
        return self.pos_drop(tokens + self.pos_embed.to(tokens.dtype))

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """(B, T'·H'·W', C) tokens → (B, C, T', H', W') feature map."""
        t, h, w = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, t, h, w)

    def forward_features(
        self, video: Tensor, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Tokens (B, T'·H'·W', C) after the final ``norm``.

        With ``return_intermediates`` also the output of every block as a feature map (B, C, T', H', W') (before any
        final norm), block 1 first. Per-block outputs exist only while the blocks are an ordinary sequence: a
        reversible stage (after ``revtal.convert``) fuses its blocks into one memory-free computation, so asking for
        intermediates of a converted model raises; take them from the unconverted (e.g. frozen, LoSA) backbone.
        """
        tokens = self.embed(video)
        if not return_intermediates:
            return self.norm(self.blocks(tokens))
        if not isinstance(self.blocks, (nn.Sequential, nn.ModuleList)):
            raise ValueError(
                f"per-block intermediate features need the blocks as an ordinary sequence, but blocks is a "
                f"{type(self.blocks).__name__} (converted by revtal.convert); use the unconverted backbone for "
                "intermediate features"
            )
        intermediates = []
        for block in self.blocks:
            tokens = block(tokens)
            intermediates.append(self.tokens_to_map(tokens))
        return self.norm(tokens), intermediates

    def pool_space(self, tokens: Tensor) -> Tensor:
        """Final tokens → temporal features (B, C, T'): mean over each time step's H'·W' tokens, then ``fc_norm``."""
        t = self.grid_size[0]
        per_step = tokens.reshape(tokens.shape[0], t, -1, tokens.shape[-1]).mean(2)
        return self.fc_norm(per_step).transpose(1, 2)

    def temporal_features(self, video: Tensor) -> Tensor:
        """Clip (B, C, T, H, W) → (B, C_embed, T / tubelet_size), spatially mean-pooled."""
        return self.pool_space(self.forward_features(video))

    def forward(self, video: Tensor) -> Tensor:
        """Clip-level feature (B, C): mean of all tokens, then ``fc_norm`` (VideoMAE's classification input)."""
        return self.fc_norm(self.forward_features(video).mean(1))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def video_vit(size: str, **kwargs) -> VideoViT:
    """A VideoMAE-sized video ViT: ``size`` in ``VIT_SIZES`` (tiny, s, b, l, g); keyword arguments override any field,
    e.g. ``depth=2`` for a cheap model of the same width."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown video ViT size {size!r}; known sizes: {sorted(VIT_SIZES)}")
    dim, depth, heads, mlp_ratio = VIT_SIZES[size]
    config = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio)
    config.update(kwargs)
    return VideoViT(**config)


# ------------------------------------------------------------------------------------------------ checkpoint keys
# checkpoint prefixes that wrap the encoder we want; applied in this order (see checkpoint.select_prefixed)
VIDEOMAE_PREFIXES = ("module.", "backbone.", "net.", "encoder.")
# keys a VideoMAE / VideoMAEv2 checkpoint may hold that are not part of the backbone: the classification head, the
# pretraining decoder and its projection and mask token
VIDEOMAE_DROPPED = (r"head\.", r"head_dropout\.", r"decoder\.", r"encoder_to_decoder\.", r"mask_token$")

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


def from_hf_videomae(model: nn.Module, **video_vit_kwargs) -> VideoViT:
    """Build a :class:`VideoViT` holding the weights of a HuggingFace ``VideoMAEModel`` instance (an optional extra;
    needs ``transformers``). ``video_vit_kwargs`` set what the HF config does not say (e.g. ``num_frames``)."""
    config = model.config
    state_dict = {k: v for k, v in hf_videomae_to_timm(model.state_dict()).items() if not k.startswith("head.")}
    built = VideoViT(
        num_frames=video_vit_kwargs.pop("num_frames", config.num_frames),
        img_size=video_vit_kwargs.pop("img_size", config.image_size),
        patch_size=config.patch_size,
        tubelet_size=config.tubelet_size,
        in_chans=config.num_channels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        # from the weights: the config's name for it changed (qkv_bias, transformers 5: qv_bias)
        qkv_bias=infer_layout(state_dict).get("qkv_bias", True),
        use_mean_pooling=config.use_mean_pooling,
        norm_eps=config.layer_norm_eps,
        **video_vit_kwargs,
    )
    if config.use_mean_pooling and "fc_norm.weight" not in state_dict:
        # VideoMAEModel has no fc_norm (only its classification wrapper does): keep ours identity-initialised
        state_dict.update({f"fc_norm.{k}": v for k, v in built.fc_norm.state_dict().items()})
    built.load_state_dict(state_dict, strict=True)
    return built


def infer_layout(state_dict: StateDict) -> dict[str, object]:
    """Constructor options a (prefix-stripped, timm-keyed) checkpoint implies: pooling layout, position embedding
    type, qkv bias and layer scale. Only what the keys decide is returned."""
    layout: dict[str, object] = {}
    if "fc_norm.weight" in state_dict:
        layout["use_mean_pooling"] = True
    elif "norm.weight" in state_dict:
        layout["use_mean_pooling"] = False
    layout["pos_embed"] = "learned" if "pos_embed" in state_dict else "sincos"
    if "blocks.0.attn.qkv.weight" in state_dict:
        layout["qkv_bias"] = "blocks.0.attn.qkv.bias" in state_dict
    if "blocks.0.ls1.gamma" in state_dict:
        layout["init_values"] = 1.0  # any value: the checkpoint's layer-scale gammas overwrite it
    return layout


__all__ = [
    "POS_EMBED_TYPES", "TubeletEmbed", "VIT_SIZES", "VideoViT", "from_hf_videomae", "hf_videomae_to_timm",
    "infer_layout", "sinusoid_table", "video_vit", "videomae_to_timm",
]
