"""Image → video ViT inflation, checked through identities that hold only if kernel, grid and tokens are right."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from revtal.backbones import CheckpointMismatchError, build, inflate_image_vit, inflate_state_dict
from revtal.backbones.inflate import inflate_patch_kernel, inflate_pos_embed


def image_vit(class_token=True, global_pool="token", img=16, patch=4, depth=2, dim=32, heads=4, seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                              num_classes=5, class_token=class_token, global_pool=global_pool)
    with torch.no_grad():  # timm initialises pos_embed small; make position matter
        model.pos_embed.normal_()
    return model.double().eval()


def repeated_frames(image, num_frames):
    return image.unsqueeze(2).expand(-1, -1, num_frames, -1, -1).contiguous()


def test_identical_frames_give_the_image_vit_output_at_every_time_step():
    # no class token, average pooling: every video token equals an image token, and joint attention over T' copies
    # of each key is the attention over one copy, so the whole network must agree, not only the embedding
    image_model = image_vit(class_token=False, global_pool="avg")
    video_model = inflate_image_vit(image_model, num_frames=6, tubelet_size=2).double().eval()
    assert video_model.grid_size == (3, 4, 4) and video_model.use_mean_pooling
    image = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = image_model.forward_head(image_model.forward_features(image), pre_logits=True)  # (B, C)
        temporal = video_model.temporal_features(repeated_frames(image, 6))  # (B, C, 3)
    for t in range(3):
        assert torch.allclose(temporal[:, :, t], expected, rtol=0, atol=1e-10), t


def test_identical_frames_give_the_image_patch_embedding_with_class_token_model():
    image_model = image_vit(class_token=True)
    video_model = inflate_image_vit(image_model, num_frames=4, tubelet_size=2).double()
    assert not video_model.use_mean_pooling  # a class-token ViT normalises every token: layout kept
    image = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = image_model._pos_embed(image_model.patch_embed(image))[:, 1:]  # drop the class token
        tokens = video_model.embed(repeated_frames(image, 4)).reshape(1, 2, 16, 32)
    for t in range(2):
        assert torch.allclose(tokens[:, t], expected, rtol=0, atol=1e-12)


def test_different_frames_are_averaged_by_the_inflated_kernel():
    weight = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    kernel = inflate_patch_kernel(weight, tubelet_size=3)
    frames = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    tubelet_response = torch.einsum("dctij,tcij->d", kernel, frames)
    mean_frame_response = torch.einsum("dcij,cij->d", weight, frames.mean(0))
    assert torch.allclose(tubelet_response, mean_frame_response, atol=1e-12)


def test_position_embedding_resized_in_space_and_replicated_in_time():
    dim = 6
    grid = torch.randn(1, 4 * 4, dim)
    constant = torch.full((1, 1 + 4 * 4, dim), 0.25)
    out = inflate_pos_embed(torch.cat([torch.zeros(1, 1, dim), grid], 1), num_prefix_tokens=1, image_grid=(4, 4),
                            video_grid=(3, 6, 6))
    assert out.shape == (1, 3 * 36, dim)
    per_step = out.reshape(3, 36, dim)
    assert torch.equal(per_step[0], per_step[1]) and torch.equal(per_step[0], per_step[2])
    # interpolation weights sum to one: a constant field stays constant
    resized_constant = inflate_pos_embed(constant, num_prefix_tokens=1, image_grid=(4, 4), video_grid=(2, 6, 6))
    assert torch.allclose(resized_constant, torch.full_like(resized_constant, 0.25), atol=1e-6)
    # same grid: the spatial embedding is copied exactly (class position dropped)
    same = inflate_pos_embed(torch.cat([torch.zeros(1, 1, dim), grid], 1), num_prefix_tokens=1, image_grid=(4, 4),
                             video_grid=(2, 4, 4))
    assert torch.equal(same.reshape(2, 16, dim)[1], grid[0])


def test_state_dict_inflation_reports_dropped_keys_and_checks_sizes():
    image_sd = image_vit().state_dict()
    video_sd, dropped = inflate_state_dict(image_sd, num_frames=8, img_size=24, tubelet_size=2)
    assert sorted(dropped) == ["cls_token", "head.bias", "head.weight"]
    assert video_sd["patch_embed.proj.weight"].shape == (32, 3, 2, 4, 4)
    assert video_sd["pos_embed"].shape == (1, 4 * 6 * 6, 32)
    with pytest.raises(ValueError, match="img_size=18"):
        inflate_state_dict(image_sd, num_frames=8, img_size=18)
    with pytest.raises(ValueError, match="num_heads and img_size"):
        inflate_image_vit(image_sd, num_frames=4)


def test_builder_inflates_an_image_checkpoint_file(tmp_path):
    # vit_tiny_video is 64 wide, 4 deep, 4 heads: an image ViT of that shape inflates into it
    image_model = image_vit(class_token=True, img=16, patch=8, depth=4, dim=64, heads=4)
    path = tmp_path / "image_vit.pth"
    torch.save({"model": image_model.float().state_dict()}, path)
    backbone = build("vit_tiny_video", num_frames=4, img_size=16, image_checkpoint=path)
    assert backbone.net.pos_embed_type == "learned" and not backbone.net.use_mean_pooling
    assert "cls_token" in backbone.load_report.dropped
    assert torch.equal(backbone.net.blocks[3].mlp.fc1.weight, image_model.blocks[3].mlp.fc1.weight.float())
    assert backbone(torch.randn(1, 3, 4, 16, 16)).shape == (1, 64, 2)
    shallow = tmp_path / "shallow.pth"
    torch.save(image_vit(img=16, patch=8, depth=2, dim=64, heads=4).state_dict(), shallow)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*blocks\.2\.norm1\.weight"):
        build("vit_tiny_video", num_frames=4, img_size=16, image_checkpoint=shallow)
