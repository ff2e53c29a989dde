"""Video backbones for temporal action localization: a VideoMAE-style video ViT, torchvision's Video Swin and video
ResNets behind one interface (:class:`VideoBackbone`), a name-based builder, local checkpoint loading and
image→video ViT inflation."""

from revtal.backbones.backbone import ResNet3dBackbone, Swin3dBackbone, VideoBackbone, VideoViTBackbone
from revtal.backbones.builder import build, list_backbones, register_backbone
from revtal.backbones.weights import CheckpointMismatchError, LoadReport, read_state_dict
from revtal.backbones.classifier import ClipClassifier
from revtal.backbones.inflate import inflate_image_vit, inflate_state_dict
from revtal.backbones.video_vit import VideoViT, video_vit, videomae_to_timm

__all__ = [
    "CheckpointMismatchError", "ClipClassifier", "LoadReport", "ResNet3dBackbone", "Swin3dBackbone", "VideoBackbone",
    "VideoViT", "VideoViTBackbone", "build", "inflate_image_vit", "inflate_state_dict", "list_backbones",
    "read_state_dict", "register_backbone", "video_vit", "videomae_to_timm",
]
