"""Checkpoints in the layouts their code bases publish load strictly into revtal's backbones with every tensor in its
place: official Video Swin (Video-Swin-Transformer / mmaction2, inside OpenTAD), ImageNet Swin inflated to 3-D,
facebookresearch SlowFast .pyth and its Caffe2 .pkl, VideoMAE / VideoMAEv2 save_model files and pretraining
encoders, mmaction2 / OpenTAD ViTs, revtal's own run checkpoints, and torch.compile / DDP prefixes.

Each test writes a state dict with the official key names and shapes and distinct values (seeded per key), loads
it through ``revtal.backbones.build`` and compares named tensors by value."""

import argparse
import datetime
import pickle

import numpy as np
import pytest
import torch
from torchvision.models.video.swin_transformer import SwinTransformer3d

from official_layouts import (
    caffe2_name, distinct, official_relative_position_index, official_slowfast, official_video_swin, videomae_encoder,
)
from revtal.backbones import build
from revtal.backbones.backbone import Swin3dBackbone
from revtal.backbones.layouts import identify
from revtal.backbones.weights import CheckpointMismatchError, UntrustedCheckpointError, read_state_dict


# ---------------------------------------------------------------------------------------------------- Video Swin
SMALL_SWIN = dict(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2],
                  window_size=[8, 7, 7])


def small_swin() -> Swin3dBackbone:
    torch.manual_seed(0)
    return Swin3dBackbone(SwinTransformer3d(**SMALL_SWIN))


def test_an_official_video_swin_kinetics_checkpoint_loads_with_every_tensor_in_place(tmp_path):
    official = official_video_swin(8, [2, 2, 2, 2], [1, 1, 2, 2])
    head = {"cls_head.fc_cls.weight": torch.randn(400, 64), "cls_head.fc_cls.bias": torch.randn(400)}
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": {**{f"backbone.{k}": v for k, v in official.items()}, **head}},
               path)
    backbone = small_swin()
    report = backbone.load_checkpoint(path)
    net = backbone.net
    assert report.clean and "official Video Swin" in report.layout
    assert sorted(report.dropped) == sorted(head) and any("cls_head" in n for n in report.notes)
    assert torch.equal(net.patch_embed.proj.weight, official["patch_embed.proj.weight"])
    assert torch.equal(net.features[2][1].attn.relative_position_bias_table,
                       official["layers.1.blocks.1.attn.relative_position_bias_table"])
    assert torch.equal(net.features[4][0].mlp[3].weight, official["layers.2.blocks.0.mlp.fc2.weight"])
    assert torch.equal(net.features[6][1].mlp[0].bias, official["layers.3.blocks.1.mlp.fc1.bias"])
    assert torch.equal(net.features[5].reduction.weight, official["layers.2.downsample.reduction.weight"])
    assert torch.equal(net.features[1].norm.bias, official["layers.0.downsample.norm.bias"])
    assert torch.equal(net.norm.weight, official["norm.weight"])
    # the buffer is recomputed by torchvision, and it is the official one
    assert torch.equal(net.features[0][0].attn.relative_position_index, official_relative_position_index(8, 7, 7))
    loaded = dict(net.state_dict())
    assert sum(any(torch.equal(v, w) for w in official.values()) for v in loaded.values()) == len(loaded)


def test_an_opentad_checkpoint_of_mmaction2_video_swin_loads(tmp_path):
    # OpenTAD: detector.backbone = BackboneWrapper(model=mmaction2 Recognizer3D); mmaction2 1.x names the final
    # norm after its output index (norm3); DDP adds module.
    official = official_video_swin(8, [2, 2, 2, 2], [1, 1, 2, 2], final_norm="norm3")
    other = {"module.neck.conv.weight": torch.randn(4, 4), "module.rpn_head.cls.weight": torch.randn(3, 4)}
    path = tmp_path / "opentad_epoch_10.pth"
    torch.save({"epoch": 10, "state_dict": {**{f"module.backbone.model.backbone.{k}": v for k, v in official.items()},
                                            **other}}, path)
    backbone = small_swin()
    report = backbone.load_checkpoint(path)
    assert report.clean and "OpenTAD" in report.layout
    assert sorted(report.dropped) == ["neck.conv.weight", "rpn_head.cls.weight"]  # named without the DDP prefix
    assert torch.equal(backbone.net.norm.weight, official["norm3.weight"])


def test_an_imagenet_swin_is_inflated_as_the_video_swin_paper_does(tmp_path):
    image = official_video_swin(8, [2, 2, 2, 2], [1, 1, 2, 2], image=True)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": image}, path)
    backbone = small_swin()
    report = backbone.load_checkpoint(path)
    net = backbone.net
    assert report.clean and "inflated" in " ".join(report.notes)
    assert {"head.weight", "head.bias"} <= set(report.dropped)
    # patch embedding: the 2-D kernel over each of the 2 temporal taps, halved: a static clip gives the image token
    assert torch.equal(net.patch_embed.proj.weight, image["patch_embed.proj.weight"].unsqueeze(2).repeat(1, 1, 2, 1, 1) / 2)
    # bias table: the 13x13 table once per temporal offset (2*8-1 = 15 of them)
    table_2d = image["layers.2.blocks.1.attn.relative_position_bias_table"]
    table_3d = net.features[4][1].attn.relative_position_bias_table
    assert table_3d.shape == (15 * 169, 2)
    assert all(torch.equal(table_3d[t * 169:(t + 1) * 169], table_2d) for t in range(15))
    assert torch.equal(net.features[6][0].attn.qkv.weight, image["layers.3.blocks.0.attn.qkv.weight"])


def test_swin_3d_tables_of_another_spatial_window_are_resized_before_inflation(tmp_path):
    image = official_video_swin(8, [2, 2, 2, 2], [1, 1, 2, 2], window=(1, 12, 12), image=True)
    path = tmp_path / "swin_base_patch4_window12_384.pth"
    torch.save({"model": image}, path)
    backbone = small_swin()
    assert backbone.load_checkpoint(path).clean
    assert backbone.net.features[0][0].attn.relative_position_bias_table.shape == (15 * 169, 1)


# ------------------------------------------------------------------------------------------------------ SlowFast
def tiny_slowfast():
    torch.manual_seed(0)
    return build("slowfast_r50", stem_dim_outs=(8, 1))


def test_a_facebookresearch_slowfast_pyth_loads_with_every_tensor_in_place(tmp_path):
    target = tiny_slowfast()
    official = official_slowfast(target)
    # names the SlowFast code gives: spot checks that the test's own table is the public layout
    assert {"s1.pathway0_stem.conv.weight", "s1_fuse.conv_f2s.weight", "s4_fuse.bn.running_var",
            "s2.pathway1_res0.branch1_bn.weight", "s5.pathway0_res2.branch2.c_bn.bias"} <= set(official)
    head = {"head.projection.weight": torch.randn(400, 288), "head.projection.bias": torch.randn(400)}
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"epoch": 196, "model_state": {**official, **head}, "optimizer_state": {}, "cfg": "MODEL: ..."}, path)
    report = target.load_checkpoint(path)
    blocks = target.net.blocks
    assert report.clean and "facebookresearch SlowFast" in report.layout and sorted(report.dropped) == sorted(head)
    assert torch.equal(blocks[0].multipathway_blocks[1].conv.weight, official["s1.pathway1_stem.conv.weight"])
    assert torch.equal(blocks[0].multipathway_fusion.conv_fast_to_slow.weight, official["s1_fuse.conv_f2s.weight"])
    assert torch.equal(blocks[3].multipathway_fusion.norm.running_var, official["s4_fuse.bn.running_var"])
    res = blocks[4].multipathway_blocks[0].res_blocks[2].branch2
    assert torch.equal(res.norm_c.bias, official["s5.pathway0_res2.branch2.c_bn.bias"])
    assert torch.equal(res.conv_b.weight, official["s5.pathway0_res2.branch2.b.weight"])
    assert torch.equal(blocks[1].multipathway_blocks[1].res_blocks[0].branch1_norm.weight,
                       official["s2.pathway1_res0.branch1_bn.weight"])


def test_a_caffe2_slowfast_pkl_loads_through_a_numpy_only_unpickler(tmp_path):
    target = tiny_slowfast()
    official = {k: v for k, v in official_slowfast(target).items() if not k.endswith("num_batches_tracked")}
    blobs = {caffe2_name(k): v.numpy() for k, v in official.items()}
    assert {"conv1_w", "t_res_conv1_bn_riv", "t_pool1_subsample_w", "t_res4_5_branch2c_bn_subsample_bn_rm",
            "res5_2_branch2c_bn_s", "t_res2_0_branch1_w"} <= set(blobs)
    blobs.update({"pred_w": np.zeros((400, 288), np.float32), "pred_b": np.zeros(400, np.float32),
                  "conv1_w_momentum": np.zeros(3, np.float32), "lr": np.array(0.1, np.float32)})
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"blobs": blobs}, fh, protocol=2)
    report = target.load_checkpoint(path)
    assert report.clean and "Caffe2" in report.layout
    assert {"pred_w", "pred_b", "conv1_w_momentum", "lr"} <= set(report.dropped)
    net = target.net.state_dict()
    for c2, official_key in (("t_pool1_subsample_w", "s1_fuse.conv_f2s.weight"),
                             ("t_res4_5_branch2c_bn_subsample_bn_rm", "s4_fuse.bn.running_mean"),
                             ("res5_2_branch2c_bn_s", "s5.pathway0_res2.branch2.c_bn.weight")):
        assert any(torch.equal(v, torch.from_numpy(blobs[c2])) for v in net.values()), c2
    assert torch.equal(target.net.blocks[0].multipathway_blocks[0].norm.running_var,
                       torch.from_numpy(blobs["res_conv1_bn_riv"]))
    # the BatchNorm counters Caffe2 does not have keep the network's value
    assert int(target.net.blocks[0].multipathway_blocks[0].norm.num_batches_tracked) == 0


def test_a_pickle_with_other_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"blobs": {"conv1_w": argparse.ArgumentParser}}, fh, protocol=2)
    with pytest.raises(ValueError, match="not allowed"):
        read_state_dict(path)


# ------------------------------------------------------------------------------------------------------ VideoMAE
VIT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)


def check_vit(net, encoder):
    assert torch.equal(net.blocks[1].attn.qkv.bias, torch.cat([encoder["blocks.1.attn.q_bias"],
                                                               torch.zeros(32), encoder["blocks.1.attn.v_bias"]]))
    assert torch.equal(net.blocks[0].mlp.fc2.weight, encoder["blocks.0.mlp.fc2.weight"])
    assert torch.equal(net.patch_embed.proj.weight, encoder["patch_embed.proj.weight"])


def test_a_videomae_v2_save_model_file_with_its_argparse_namespace_loads(tmp_path):
    encoder = videomae_encoder()
    path = tmp_path / "vit_g_hybrid_pt_1200e_k710_ft.pth"
    torch.save({"model": {**encoder, "head.weight": torch.randn(710, 32), "head.bias": torch.randn(710)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}, "epoch": 39,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="vit_giant_patch14_224", lr=1e-3),
                "max_accuracy": np.float64(0.87)}, path)
    backbone = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    assert backbone.load_report.clean and sorted(backbone.load_report.dropped) == ["head.bias", "head.weight"]
    check_vit(backbone.net, encoder)


def test_a_videomae_pretraining_file_gives_its_encoder(tmp_path):
    encoder = videomae_encoder(mean_pooling=False)
    decoder = {"decoder.blocks.0.norm1.weight": torch.randn(16), "encoder_to_decoder.weight": torch.randn(16, 32),
               "mask_token": torch.randn(1, 1, 16)}
    path = tmp_path / "vit_g_hybrid_pt_1200e.pth"
    torch.save({"model": {**{f"encoder.{k}": v for k, v in encoder.items()}, **decoder}}, path)
    backbone = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    assert backbone.load_report.clean and sorted(backbone.load_report.dropped) == sorted(decoder)
    check_vit(backbone.net, encoder)
    assert torch.equal(backbone.net.norm.weight, encoder["norm.weight"])


def test_an_opentad_videomae_checkpoint_in_mmaction2_names_loads(tmp_path):
    # mmaction2's VisionTransformer (vit_mae) and OpenTAD's VisionTransformerAdapter: mmcv PatchEmbed
    # (patch_embed.projection), FFN (mlp.layers.0.0 / mlp.layers.1), a sinusoidal pos_embed buffer
    encoder = videomae_encoder()
    renamed = {k.replace("patch_embed.proj.", "patch_embed.projection.").replace("mlp.fc1.", "mlp.layers.0.0.")
               .replace("mlp.fc2.", "mlp.layers.1."): v for k, v in encoder.items()}
    renamed["pos_embed"] = torch.randn(1, 16, 32)
    renamed["blocks.1.adapter.down_proj.weight"] = torch.randn(8, 32)
    path = tmp_path / "adatad_thumos.pth"
    torch.save({"state_dict": {f"module.backbone.model.backbone.{k}": v for k, v in renamed.items()},
                "state_dict_ema": {}}, path)
    backbone = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    report = backbone.load_report
    assert report.clean and "mmaction2 / OpenTAD VideoMAE" in report.layout
    assert {"pos_embed", "blocks.1.adapter.down_proj.weight"} <= set(report.dropped)
    check_vit(backbone.net, encoder)


def test_compiled_and_ddp_wrapped_state_dicts_load(tmp_path):
    source = build("vit_tiny_video", num_frames=8, img_size=16, **VIT)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    wrapped = {f"module._orig_mod.{k}": v for k, v in source.net.state_dict().items()}
    path = tmp_path / "compiled.pt"
    torch.save(wrapped, path)
    target = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    assert target.load_report.clean
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


# --------------------------------------------------------------------------------------------- reading the file
def test_a_whole_pickled_model_is_explained_and_loads_only_when_trusted(tmp_path):
    source = small_swin()
    path = tmp_path / "model.pt"
    torch.save(source.net, path)
    with pytest.raises(UntrustedCheckpointError) as error:
        read_state_dict(path)
    message = str(error.value)
    assert "whole pickled model" in message and "model.state_dict()" in message and "--trust-checkpoint" in message
    assert "\x1b" not in message and "\n" not in message
    target = small_swin()
    target.load_checkpoint(path, trust=True)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_an_unknown_class_needs_trust_and_the_error_names_the_option(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"model": {"w": torch.ones(1)}, "saved": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"datetime\.date.*trust_checkpoint") as error:
        read_state_dict(path)
    assert "\x1b" not in str(error.value)
    assert torch.equal(read_state_dict(path, trust=True)["w"], torch.ones(1))


# ----------------------------------------------------------------------------------------------- foreign layouts
def test_a_checkpoint_for_another_backbone_is_named_with_what_to_use(tmp_path):
    official = official_video_swin(8, [2, 2, 2, 2], [1, 1, 2, 2])
    path = tmp_path / "swin.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in official.items()}}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    first = str(error.value).splitlines()[0]
    assert "an official Video Swin" in first and "use backbone swin3d_t" in first
    assert "mode" not in first.split("Likely cause:")[1]
    what, advice = identify({"s1.pathway0_stem.conv.weight": torch.zeros(1)})
    assert "facebookresearch SlowFast" in what and "slowfast_r50" in advice


@pytest.mark.parametrize("mode", ["dr2net", "losa"])
def test_the_backbone_of_a_revtal_run_checkpoint_loads_as_pretrained_weights(tmp_path, mode):
    from revtal.engine.run_state import rng_state
    from revtal.engine.config import config_from_dict
    from revtal.engine.model import build_model

    config = config_from_dict({
        "data": {"num_frames": 8, "img_size": 16},
        "backbone": {"name": "vit_tiny_video", "mode": mode, "options": VIT, "losa": {"clip_frames": 4, "dim": 32}},
    }, source="test")
    model = build_model(config, 2)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "best.pt"
    # the layout revtal.engine.run_state.training_state writes: numpy random state included
    torch.save({"model": model.state_dict(), "optimizer": {}, "rng": rng_state(), "epoch": 3, "step": 9,
                "best_metric": np.float64(0.5), "classes": ["a", "b"], "config": config.to_dict()}, path)
    backbone = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT)
    trained = model.extractor.backbone if mode == "losa" else model.extractor
    assert backbone.load_report.clean and "revtal training run" in backbone.load_report.layout
    assert all(torch.equal(a, b) for a, b in zip(trained.net.state_dict().values(), backbone.net.state_dict().values()))
    assert any(k.startswith("localizer.") for k in backbone.load_report.dropped)


def test_the_trust_option_reaches_the_backbone_from_the_config_and_the_command_line(tmp_path):
    from revtal.commands import train
    from revtal.commands.common import recipe
    from revtal.engine.config import config_from_dict
    from revtal.engine.model import build_extractor

    source = build("vit_tiny_video", num_frames=8, img_size=16, **VIT)
    path = tmp_path / "whole_model.pt"
    torch.save(source.net, path)
    settings = {"data": {"num_frames": 8, "img_size": 16},
                "backbone": {"name": "vit_tiny_video", "mode": "conventional", "pretrained": str(path), "options": VIT}}
    with pytest.raises(UntrustedCheckpointError, match="backbone.trust_checkpoint"):
        build_extractor(config_from_dict(settings, source="test"))
    settings["backbone"]["trust_checkpoint"] = True
    extractor = build_extractor(config_from_dict(settings, source="test"))
    assert torch.equal(extractor.net.blocks[1].mlp.fc1.weight, source.net.blocks[1].mlp.fc1.weight)
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert recipe(parser.parse_args(["--trust-checkpoint"])).backbone.trust_checkpoint
    assert not recipe(parser.parse_args([])).backbone.trust_checkpoint


def test_a_checkpoint_of_another_size_names_the_backbone_of_that_size(tmp_path):
    # the official Swin-B layout (embedding 128, 18 blocks in stage 3) given to swin3d_t: names and shapes only
    official = official_video_swin(128, [2, 2, 18, 2], [4, 8, 16, 32], meta=True)
    path = tmp_path / "swin_base_patch244_window877_kinetics400_22k.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in official.items()}}, path)
    with torch.device("meta"):
        with pytest.raises(CheckpointMismatchError) as error:
            build("swin3d_t", pretrained=path)
    first = str(error.value).splitlines()[0]
    assert "official Video Swin" in first and "of swin3d_b: use backbone swin3d_b" in first


def test_a_huggingface_videomae_file_loads_through_build_and_gives_the_same_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(image_size=16, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                         use_mean_pooling=False, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    hf_model = transformers.VideoMAEModel(config).eval()
    path = tmp_path / "videomae_hf.bin"
    torch.save(hf_model.state_dict(), path)
    ours = build("vit_tiny_video", pretrained=path, num_frames=8, img_size=16, **VIT).eval()
    assert "HuggingFace" in ours.load_report.layout
    x = torch.randn(1, 3, 8, 16, 16)
    with torch.no_grad():
        expected = hf_model(x.transpose(1, 2)).last_hidden_state
        assert torch.allclose(ours.net.forward_features(x), expected, atol=1e-5)
