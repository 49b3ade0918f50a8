"""The training configuration: YAML files, overrides, and clear errors for bad values."""

from pathlib import Path

import pytest

from t2ifast.training.config import Config, ConfigError, load_config, load_run_config, save_config


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = load_config()
    assert config.model == "gan-int-cls" and config.train.betas == (0.5, 0.999)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: gan-cls\ngan:\n  ngf: 48\ntrain:\n  lr_g: 1e-4\n  betas: [0.0, 0.9]\n")
    config = load_config(path, ["gan.ngf=16", "train.amp=bf16", "train.compile=true", "train.betas=[0.5, 0.99]"])
    assert (config.model, config.gan.ngf, config.train.amp, config.train.compile) == ("gan-cls", 16, "bf16", True)
    assert config.train.lr_g == 1e-4  # YAML reads 1e-4 as a string; coerced to the default's type
    assert config.train.betas == (0.5, 0.99)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=stylegan", r"model must be one of gan-int-cls, .*got 'stylegan'"),
        ("train.batch_size=1", r"train.batch_size must be at least 2, got 1"),
        ("train.minutes=-5", r"train.minutes must be at least 0.0, got -5.0"),
        ("stackgan.stage2_batch_size=1", r"stackgan.stage2_batch_size must be at least 2, got 1"),
        ("train.batch_size=many", r"train.batch_size must be an integer, got 'many'"),
        ("gan.interpolation_beta=1.5", r"gan.interpolation_beta must be in \[0.0, 1.0\], got 1.5"),
        ("gan.wrong_pairs=random", r"gan.wrong_pairs must be one of class, roll; got 'random'"),
        ("train.amp=fp8", r"train.amp must be one of none, bf16; got 'fp8'"),
        ("train.betas=[0.5]", r"train.betas must be two numbers in \[0, 1\)"),
        ("train.lr_d=-1", r"train.lr_d must be positive, got -1.0"),
        ("text.embedding_dim=255", r"text.embedding_dim must be even"),
        ("data.loader=pillow", r"data.loader must be one of auto, dali, torch; got 'pillow'"),
        ("gan.nfg=3", r"gan: unknown key\(s\) \['nfg'\]; known: \['damsm_weight', 'ema_decay'"),
        ("train.compile=maybe", r"train.compile must be true or false, got 'maybe'"),
        ("gan.damsm_weight=-1", r"gan.damsm_weight must be at least 0.0, got -1.0"),
        ("nonsense", r"an override must look like section.key=value"),
        ("eval.max_samples=1", r"eval.max_samples must be at least 2, got 1"),
        ("text.pretrain_contrast=texture", r"text.pretrain_contrast must be one of shape, colour, .*got 'texture'"),
        # YAML's true is the integer 1 to Python; nan and inf pass every "positive" check
        ("train.steps=true", r"train.steps must be an integer, got True"),
        ("gan.ngf=true", r"gan.ngf must be an integer, got True"),
        ("train.steps=1e30", r"train.steps must be an integer, got '1e30'"),
        ("train.lr_g=nan", r"train.lr_g must be a finite number, got 'nan'"),
        ("train.lr_d=.inf", r"train.lr_d must be a finite number, got inf"),
        ("train.betas=0.5", r"train.betas must be a list of numbers, got 0.5"),
        ("train.betas=[0.5, true]", r"train.betas must be a list of numbers, got \[0.5, True\]"),
        ("eval.caption_accuracy=2", r"eval.caption_accuracy must be true or false, got 2"),
        ("data.path=", r"data.path must be a string, got an empty value"),
        ("train.device=[cpu]", r"train.device must be a string, got \['cpu'\]"),
        ("model.x=1", r"model is a single value, not a section: got keys \['x'\]"),
        ("gan.ngf=[1,", r"gan.ngf: the value '\[1,' is not valid YAML"),
    ],
)
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.path=/data/birds"], r"text.pretrain_contrast='shape' needs every image's attributes, which only"),
        (["text.pretrain_contrast_fraction=0"], r"text.pretrain_contrast_fraction must be in \(0, 1\], got 0.0"),
        (["text.pretrain_contrast_group=1"], r"text.pretrain_contrast_group must be at least 2, got 1"),
    ],
)
def test_contrast_groups_need_the_synthetic_set_and_sane_sizes(overrides, message):
    load_config(overrides=["text.pretrain_contrast=shape"])  # valid on its own
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["text.pretrain_contrast=shape", *overrides])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_that_is_no_yaml_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* is a folder, not a YAML file"):
        load_config(tmp_path)
    (tmp_path / "broken.yaml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match=r"config file .*broken.yaml is not valid YAML \(while parsing"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match=r"config file .*image.yaml is not valid YAML \('utf-8' codec"):
        load_config(tmp_path / "image.yaml")


def test_betas_are_read_from_a_list_or_a_string():
    assert load_config(overrides=["train.betas=0.0,0.9"]).train.betas == (0.0, 0.9)
    assert load_config(overrides=["train.betas=(0.5, 0.99)"]).train.betas == (0.5, 0.99)


def test_from_dict_rejects_non_mapping_sections():
    with pytest.raises(ConfigError, match="train must be a mapping, got int"):
        Config.from_dict({"train": 3})


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.model in path.name or path.name.startswith("synthetic")  # the synthetic set: the default model


@pytest.mark.parametrize("source", ["precomputed", "minilm"])
def test_the_gan_damsm_loss_needs_the_damsm_text_encoder(source):
    with pytest.raises(
        ConfigError, match=rf"gan.damsm_weight=1.0 needs text.source=damsm .*got text.source='{source}'"
    ):
        load_config(overrides=["gan.damsm_weight=1", f"text.source={source}"])
    load_config(overrides=["gan.damsm_weight=1", f"text.source={source}", "model=stackgan"])  # not used there


def test_a_run_saved_before_a_key_existed_loads_with_its_earlier_value(tmp_path):
    # runs saved before text.image_encoder_positional had an averaging image encoder: their weights must still load
    config = load_config()
    assert config.text.image_encoder_positional
    save_config(config, tmp_path / "config.yaml")
    assert load_run_config(tmp_path / "config.yaml").text.image_encoder_positional
    old = (tmp_path / "config.yaml").read_text().replace("  image_encoder_positional: true\n", "")
    (tmp_path / "config.yaml").write_text(old)
    assert not load_run_config(tmp_path / "config.yaml").text.image_encoder_positional
    assert load_config(tmp_path / "config.yaml").text.image_encoder_positional  # a config file gets today's default
