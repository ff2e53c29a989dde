"""Config validation: unknown keys and wrong types name the key and the file; overrides parse as YAML."""

from pathlib import Path

import pytest

from revtal.engine.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    assert load_config(path).backbone.mode


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'optim\.lrr'"):
        load_config(f)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  num_frames: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.num_frames must be an integer, got str 'many'"):
        load_config(f)
    f.write_text("backbone:\n  mode: magic\n")
    with pytest.raises(ConfigError, match=r"backbone\.mode must be one of"):
        load_config(f)


def test_overrides_parse_yaml_values():
    c = load_config(None, ["optim.head_lr=3e-4", "backbone.mode=re2", "eval.tiou=[0.5, 0.7]", "data.skip_bad_videos=true"])
    assert c.optim.head_lr == 3e-4 and c.backbone.mode == "re2" and c.eval.tiou == [0.5, 0.7]
    assert c.data.skip_bad_videos is True
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.head_lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "broken.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
