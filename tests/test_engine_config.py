"""Config validation: unknown keys and wrong types name the key and the file; overrides parse as YAML."""

from pathlib import Path

import pytest
import yaml

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
    assert c.optim.head_lr == 3e-4 and c.backbone.mode == "re2" and c.eval.tiou == (0.5, 0.7)
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


def test_config_is_immutable_and_with_values_validates():
    import dataclasses

    c = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.data.annotations = "x.json"
    with pytest.raises(TypeError, match="immutable"):
        c.backbone.options["depth"] = 2
    changed = c.with_values({"data.annotations": "x.json", "backbone.options.depth": 2})
    assert (changed.data.annotations, changed.backbone.options["depth"]) == ("x.json", 2)
    assert c.data.annotations == "" and "depth" not in c.backbone.options
    with pytest.raises(ConfigError, match="unknown key 'data.anotations'"):
        c.with_values({"data.anotations": "x.json"})


def test_sections_of_other_components_are_typed_and_validated_at_load(tmp_path):
    f = tmp_path / "bad.yaml"
    for text, message in (
        ("localizer:\n  options: {embed_dims: 8}\n", r"bad\.yaml: unknown key 'localizer\.options\.embed_dims'"),
        ("localizer:\n  options: {regression_ranges: [[0, 4]]}\n", r"bad\.yaml: localizer\.options: .*ranges"),
        ("localizer:\n  postprocess: {sigma: 0}\n", r"bad\.yaml: localizer\.postprocess: .*sigma"),
        ("localizer:\n  postprocess: {sigma: wide}\n", r"localizer\.postprocess\.sigma must be a number"),
        ("backbone:\n  losa: {fusion: magic}\n", r"bad\.yaml: backbone\.losa: .*fusion"),
        ("backbone:\n  losa: {clip_frame: 8}\n", r"unknown key 'backbone\.losa\.clip_frame'"),
        ("backbone:\n  schedule: {end: sometimes}\n", r"bad\.yaml: backbone\.schedule: .*end"),
    ):
        f.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(f)


def test_every_schedule_argument_is_reachable_from_yaml(tmp_path):
    import inspect

    from revtal.reversible.schedule import CoefficientSchedule

    c = load_config(None, ["backbone.schedule.end=auto", "backbone.schedule.tolerance=1e-3",
                           "backbone.schedule.curvature=2.5", "backbone.schedule.policy=exponential",
                           "backbone.schedule.calibrate_points=5"])
    schedule = c.backbone.schedule.build(iters_per_epoch=4)
    assert (schedule.end, schedule.tolerance, schedule.curvature, schedule.policy) == ("auto", 1e-3, 2.5, "exponential")
    assert c.backbone.schedule.calibrate_points == 5
    arguments = set(inspect.signature(CoefficientSchedule.__init__).parameters) - {"self", "iters_per_epoch"}
    assert arguments <= {f.name for f in __import__("dataclasses").fields(c.backbone.schedule)}


def test_saved_config_round_trips_exactly(tmp_path):
    from revtal.engine.config import config_from_dict, dump_config

    c = load_config(CONFIGS[0], ["localizer.options.window_size=[3, 3, 3, 3, 3, -1]"])
    dump_config(c, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c
    assert config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize("key, value, message", [
    ("optim.head_lr", -1e-3, "optim.head_lr must be >= 0, got -0.001"),
    ("optim.backbone_lr", float("nan"), "optim.backbone_lr must be >= 0, got nan"),
    ("backbone.alpha", 1.5, "backbone.alpha must be in [0, 1], got 1.5"),
    ("backbone.beta", 0, "backbone.beta must be in (0, 1], got 0.0"),
    ("backbone.schedule.beta0", 1.5, "backbone.schedule.beta0 must be in (0, 1], got 1.5"),
    ("backbone.schedule.beta0", 0.0, "backbone.schedule.beta0 must be in (0, 1], got 0.0"),
    ("optim.epochs", 0, "optim.epochs must be >= 1, got 0"),
    ("optim.ema_decay", 1.0, "optim.ema_decay must be in [0, 1), got 1.0"),
    ("eval.tiou", [0.5, 1.2], "eval.tiou[1] must be in (0, 1], got 1.2"),
    ("data.std", [0.2, 0.0, 0.2], "data.std[1] must be > 0, got 0.0"),
])
def test_out_of_range_values_name_the_key_and_the_file(tmp_path, key, value, message):
    section, _, name = key.rpartition(".")
    recipe = tmp_path / "recipe.yaml"
    nested: dict = {name: value}
    for part in reversed(section.split(".")):
        nested = {part: nested}
    recipe.write_text(yaml.safe_dump(nested))
    with pytest.raises(ConfigError) as error:
        load_config(recipe)
    assert str(error.value) == f"{recipe}: {message}"


def test_exact_beta_that_rounds_to_zero_names_the_key():
    with pytest.raises(ConfigError, match=r"backbone.beta=0.001 rounds to 0 with backbone.beta_bits=8 .*raise backbone.beta_bits"):
        load_config(None, ["backbone.mode=hard", "backbone.beta=0.001"])
    load_config(None, ["backbone.mode=hard", "backbone.beta=0.001", "backbone.beta_bits=12"])
    with pytest.raises(ConfigError, match=r"backbone.schedule.beta0=0.001 rounds to 0"):
        load_config(None, ["backbone.schedule.beta0=0.001"])


def test_bad_yaml_is_one_line_with_its_position(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("optim:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(f)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{f}: not valid YAML (line ")


def test_localizer_name_selects_the_options_section_and_rejects_options_it_does_not_take():
    from revtal.engine.config import ConfigError, config_from_dict, load_config
    from revtal.localizers.vsgn import VSGNConfig

    config = load_config(None, ["localizer.name=vsgn", "localizer.options.hidden_dim=32",
                                "localizer.options.anchor_scales=[1, 2]"])
    settings = config.localizer.options.build()
    assert isinstance(settings, VSGNConfig) and settings.hidden_dim == 32 and settings.anchor_scales == (1.0, 2.0)
    assert config_from_dict(config.to_dict()) == config  # the saved config.yaml reads back the same
    assert load_config(None, ["localizer.name=vsgn"]).localizer.options.build() == VSGNConfig()
    assert load_config(None, []).localizer.name == "actionformer"
    with pytest.raises(ConfigError, match="unknown key 'localizer.options.embed_dim': localizer 'vsgn' takes no option 'embed_dim'"):
        load_config(None, ["localizer.name=vsgn", "localizer.options.embed_dim=64"])
    with pytest.raises(ConfigError, match=r"localizer.name must be one of \['actionformer', 'vsgn'\], got 'bmn'"):
        load_config(None, ["localizer.name=bmn"])
    with pytest.raises(ConfigError, match="localizer.options: VSGNConfig.short_ratio"):
        load_config(None, ["localizer.name=vsgn", "localizer.options.short_ratio=0.7"])
