"""Video ViT: reversible conversion (equivalence, gradient parity, memory), checkpoints and VideoMAE key mapping."""

import copy
import math

import pytest
import torch

import revtal
from revtal.backbones import CheckpointMismatchError, VideoViT, VideoViTBackbone
from revtal.backbones.video_vit import from_hf_videomae, hf_videomae_to_timm, sinusoid_table
from revtal.reversible import ReversibleStage
from revtal.utils.memory import saved_bytes
from tests.helpers import assert_bitwise_same_network, assert_reversible_matches_vanilla


def tiny_video_vit(depth=3, seed=0, **kw) -> VideoViT:
    torch.manual_seed(seed)
    config = dict(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, embed_dim=32, depth=depth, num_heads=4)
    config.update(kw)
    return VideoViT(**config)


def clip(batch=2, dtype=torch.float32, requires_grad=False):
    return torch.randn(batch, 3, 4, 16, 16, dtype=dtype, requires_grad=requires_grad)


def _loss(backbone, x):
    return (backbone(x) ** 2).sum()


def test_sinusoid_table_matches_hand_computed_values():
    table = sinusoid_table(5, 6)[0].double()
    for pos in (0, 3, 4):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-7)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-7)


def test_shapes_token_order_and_layouts():
    model = tiny_video_vit()
    x = clip()
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 2 * 2 * 2, 32) and model.grid_size == (2, 2, 2)
    temporal = model.temporal_features(x)
    assert temporal.shape == (2, 32, 2)
    # time-major token order: time step t's temporal feature is fc_norm of the mean of tokens t*4 .. t*4+3
    expected = model.fc_norm(tokens.reshape(2, 2, 4, 32).mean(2)).transpose(1, 2)
    assert torch.allclose(temporal, expected)
    # sincos position embedding is not stored (VideoMAE checkpoints do not hold it); a learned one is
    assert "pos_embed" not in model.state_dict() and "fc_norm.weight" in model.state_dict()
    learned = tiny_video_vit(pos_embed="learned", use_mean_pooling=False)
    assert learned.state_dict()["pos_embed"].shape == (1, 8, 32)
    assert "norm.weight" in learned.state_dict() and "fc_norm.weight" not in learned.state_dict()
    with pytest.raises(ValueError, match=r"3×4×16×16.*got 3×6×16×16"):
        model(torch.randn(1, 3, 6, 16, 16))


def test_original_point_is_bitwise_the_unconverted_video_vit():
    ref = VideoViTBackbone(tiny_video_vit(depth=3))
    converted = revtal.convert(copy.deepcopy(ref), "original")
    assert isinstance(converted.net.blocks, ReversibleStage)
    assert_bitwise_same_network(ref, converted, clip())


def test_reversible_gradients_match_vanilla_at_re2_point_float64():
    ref = VideoViTBackbone(tiny_video_vit(depth=4).double())
    x = clip(dtype=torch.float64, requires_grad=True)
    assert_reversible_matches_vanilla(ref, x, 1e-10, method="dr2net", alpha=0.0, beta=1.0)


def test_saved_bytes_constant_in_depth():
    x = clip()

    def saved(depth, backprop):
        model = revtal.convert(VideoViTBackbone(tiny_video_vit(depth=depth)), "dr2net", backprop=backprop)
        return saved_bytes(lambda: _loss(model, x), model)

    reversible = {depth: saved(depth, "reversible") for depth in (2, 4, 8)}
    assert max(reversible.values()) <= 1.05 * min(reversible.values()), reversible
    # the meter sees the stage's tensors: vanilla backprop stores them and grows with depth
    assert saved(8, "vanilla") > 2 * saved(2, "vanilla")


def test_original_checkpoint_loads_strictly_into_converted_backbone(tmp_path):
    ref = tiny_video_vit(depth=2, seed=0)
    path = tmp_path / "video_vit.pth"
    torch.save(ref.state_dict(), path)
    converted = revtal.convert(VideoViTBackbone(tiny_video_vit(depth=2, seed=1)), "dr2net", alpha=1.0, beta=0.0,
                               backprop="vanilla")
    report = converted.load_checkpoint(path, strict=True)
    assert report.clean and report.dropped == []
    x = clip()
    assert torch.equal(converted(x), VideoViTBackbone(ref)(x))


def _as_videomae(state_dict, prefix):
    """Rename timm keys the VideoMAE way: separate q/v biases (k bias discarded), gamma_1/2 for layer scale."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            base = key[: -len("qkv.bias")]
            out[prefix + base + "q_bias"], out[prefix + base + "v_bias"] = q, v
        elif key.endswith("ls1.gamma") or key.endswith("ls2.gamma"):
            out[prefix + key.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")] = value
        else:
            out[prefix + key] = value
    return out


def test_videomae_pretraining_checkpoint_maps_and_k_bias_is_inert(tmp_path):
    source = tiny_video_vit(depth=2, init_values=0.5, use_mean_pooling=False)
    with torch.no_grad():  # a nonzero key bias: VideoMAE's format cannot hold it, and it must not matter
        for block in source.blocks:
            block.attn.qkv.bias.normal_()
    checkpoint = _as_videomae(source.state_dict(), "encoder.")
    checkpoint.update({
        "decoder.blocks.0.norm1.weight": torch.ones(16), "encoder_to_decoder.weight": torch.ones(16, 32),
        "mask_token": torch.zeros(1, 1, 16),
    })
    assert "encoder.blocks.0.attn.q_bias" in checkpoint and "encoder.blocks.0.gamma_1" in checkpoint
    path = tmp_path / "videomae_pretrain.pth"
    torch.save({"model": checkpoint}, path)

    target = VideoViTBackbone(tiny_video_vit(depth=2, init_values=0.5, use_mean_pooling=False, seed=3))
    report = target.load_checkpoint(path, strict=True)
    assert sorted(report.dropped) == ["decoder.blocks.0.norm1.weight", "encoder_to_decoder.weight", "mask_token"]
    loaded_bias = target.net.blocks[0].attn.qkv.bias
    q, k, v = source.blocks[0].attn.qkv.bias.chunk(3)
    assert torch.equal(loaded_bias, torch.cat([q, torch.zeros_like(k), v]))
    assert torch.equal(target.net.blocks[1].ls2.gamma, source.blocks[1].ls2.gamma)
    x = clip()
    with torch.no_grad():
        assert torch.allclose(target.net(x), source(x), atol=1e-5)


def test_videomae_finetuned_checkpoint_with_ddp_prefix_and_head(tmp_path):
    source = tiny_video_vit(depth=2)
    checkpoint = {"module." + k: v for k, v in _as_videomae(source.state_dict(), "").items()}
    checkpoint.update({"module.head.weight": torch.zeros(5, 32), "module.head.bias": torch.zeros(5)})
    path = tmp_path / "videomae_ft.pth"
    torch.save({"module": checkpoint}, path)
    target = VideoViTBackbone(tiny_video_vit(depth=2, seed=4))
    assert sorted(target.load_checkpoint(path).dropped) == ["head.bias", "head.weight"]
    assert torch.equal(target.net.fc_norm.weight, source.fc_norm.weight)
    # the wrong pooling layout is a mismatch that names the keys
    other = VideoViTBackbone(tiny_video_vit(depth=2, use_mean_pooling=False))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*norm\.weight(.|\n)*unexpected keys.*fc_norm"):
        other.load_checkpoint(path)


def test_huggingface_videomae_keys_map_to_timm():
    source = tiny_video_vit(depth=1, use_mean_pooling=False)
    sd = source.state_dict()
    hf = {
        "videomae.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "videomae.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "videomae.layernorm.weight": sd["norm.weight"], "videomae.layernorm.bias": sd["norm.bias"],
    }
    q, k, v = sd["blocks.0.attn.qkv.weight"].chunk(3)
    qb, _, vb = sd["blocks.0.attn.qkv.bias"].chunk(3)
    layer = "videomae.encoder.layer.0."
    hf.update({layer + "attention.attention.query.weight": q, layer + "attention.attention.key.weight": k,
               layer + "attention.attention.value.weight": v, layer + "attention.attention.q_bias": qb,
               layer + "attention.attention.v_bias": vb})
    for hf_name, timm_name in [("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                               ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                               ("output.dense", "mlp.fc2")]:
        for p in ("weight", "bias"):
            hf[f"{layer}{hf_name}.{p}"] = sd[f"blocks.0.{timm_name}.{p}"]
    mapped = hf_videomae_to_timm(hf)
    assert set(mapped) == set(sd)
    assert torch.equal(mapped["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    target = VideoViTBackbone(tiny_video_vit(depth=1, use_mean_pooling=False, seed=5))
    target.load_checkpoint(hf)
    assert torch.equal(target.net.blocks[0].mlp.fc2.weight, source.blocks[0].mlp.fc2.weight)


def test_intermediate_features_per_block_and_refused_after_conversion():
    backbone = VideoViTBackbone(tiny_video_vit(depth=3))
    x = clip()
    final, intermediates = backbone.forward_features(x, return_intermediates=True)
    assert len(intermediates) == 3 and all(t.shape == (2, 32, 2, 2, 2) for t in intermediates)
    # mean-pooling layout: the final norm is the identity, so the last block's output is the final map
    assert torch.equal(intermediates[-1], final)
    # the first intermediate is one block applied to the embedded tokens
    first = backbone.net.tokens_to_map(backbone.net.blocks[0](backbone.net.embed(x)))
    assert torch.equal(intermediates[0], first)
    revtal.convert(backbone, "dr2net")
    with pytest.raises(ValueError, match="ReversibleStage"):
        backbone.forward_features(x, return_intermediates=True)


def test_huggingface_videomae_model_gives_the_same_tokens():
    transformers = pytest.importorskip("transformers")  # optional extra, not installed in CI
    config = transformers.VideoMAEConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                         use_mean_pooling=False)
    hf_model = transformers.VideoMAEModel(config).eval()
    ours = from_hf_videomae(hf_model).eval()
    x = clip()
    with torch.no_grad():
        expected = hf_model(x.transpose(1, 2)).last_hidden_state  # HF takes (B, T, C, H, W)
        assert torch.allclose(ours.forward_features(x), expected, atol=1e-5)
