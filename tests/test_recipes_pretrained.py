"""Every recipe in configs/ names the checkpoint file its paper's users download, and its backbone loads from a file
in that file's official layout, strictly. Full-size Swin and SlowFast on the meta device (names and shapes, no
memory); the ViT-B at its width with 2 of its 12 blocks (its sinusoidal table cannot be built on the meta device)."""

from pathlib import Path

import pytest
import torch

from official_layouts import official_slowfast, official_video_swin, videomae_encoder
from revtal.backbones import build
from revtal.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if "tiny_cpu" not in p.name)

# backbone name -> (file name the recipe must ask for, official-layout state dict of that file)
OFFICIAL_FILES = {
    "swin3d_t": ("swin_tiny_patch244_window877_kinetics400_1k.pth", lambda net: {"state_dict": {
        f"backbone.{k}": v for k, v in official_video_swin(96, [2, 2, 6, 2], [3, 6, 12, 24], meta=True).items()}}),
    "slowfast_r50": ("SLOWFAST_8x8_R50.pyth", lambda backbone: {"model_state": official_slowfast(backbone, meta=True),
                                                                "cfg": "TRAIN: ..."}),
    "vit_b_video": ("vit_b_k710_dl_from_giant.pth", lambda net: {"module": videomae_encoder(768, 2, patch=16)}),
    "vit_g_video": ("vit_g_hybrid_pt_1200e_k710_ft.pth", lambda net: {"module": videomae_encoder(1408, 2, patch=14, hidden=6144)}),
}
SCALED_DOWN = {"vit_b_video": {"depth": 2}, "vit_g_video": {"depth": 2}}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_loads_its_backbone_from_the_official_file_it_names(recipe, tmp_path):
    config = load_config(str(recipe), [])
    settings = config.backbone
    name, make = OFFICIAL_FILES[settings.name]
    assert Path(settings.pretrained).name == name
    options = {**settings.options, **SCALED_DOWN.get(settings.name, {})}
    with torch.device("cpu" if settings.name in SCALED_DOWN else "meta"):
        reference = build(settings.name, num_frames=16, img_size=224, **options)
        path = tmp_path / name
        torch.save(make(reference), path)
        backbone = build(settings.name, pretrained=path, num_frames=16, img_size=224, **options)
    report = backbone.load_report
    assert report.clean and report.layout and not report.missing
