"""config_cli: experiment loading, typed overrides, clear errors; the experiments load."""

import pytest

from ssd_jax import config_cli
from ssd_jax.cli import train_cmd


def test_parse_override():
    assert config_cli.parse_override("--config.optim.lr=0.002") == ("optim.lr", "0.002")
    with pytest.raises(ValueError, match="--config"):
        config_cli.parse_override("--config.optim.lr")


@pytest.mark.parametrize("text,current,expected", [
    ("0.002", 1e-3, 0.002), ("3", 1.0, 3.0), ("7", 1, 7), ("True", False, True), ("no", True, False),
    ("hello", "x", "hello"), ("(80000, 100000)", (1,), (80000, 100000)), ("80000,100000", (), (80000, 100000)),
    ("()", (1, 2), ()), ("[1, 2]", None, [1, 2]),
])
def test_parse_value_by_field_type(text, current, expected):
    assert config_cli.parse_value(text, current) == expected


def test_overrides_apply_with_type_checks_and_clear_errors():
    config = config_cli.load_config("experiments/demo.py")
    config_cli.apply_overrides(config, [("optim.lr", "0.002"), ("optim.decay_steps", "10,20"), ("data.augment", "false")])
    assert config.optim.lr == 0.002 and config.optim.decay_steps == (10, 20) and config.data.augment is False
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr'.*optim.lr"):
        config_cli.apply_overrides(config, [("optim.lrr", "1")])
    with pytest.raises(KeyError, match="unknown config key 'optimm.lr'"):
        config_cli.apply_overrides(config, [("optimm.lr", "1")])
    with pytest.raises(ValueError, match="num_steps=ten.*int"):
        config_cli.apply_overrides(config, [("num_steps", "ten")])
    with pytest.raises(KeyError, match="is a group"):
        config_cli.apply_overrides(config, [("optim", "1")])


def test_experiments_and_their_runlocal_variants_load():
    for name in ("demo", "ssd300_vgg16_voc", "ssd512_vgg16_voc", "ssd300_vgg16_coco", "ssdlite_mobilenetv2_coco"):
        full = config_cli.load_config(f"experiments/{name}.py")
        small = config_cli.load_config(f"experiments/{name}.py:runlocal")
        assert not full.runlocal and small.runlocal and small.num_steps < full.num_steps
    voc = config_cli.load_config("experiments/ssd300_vgg16_voc.py")
    assert (voc.num_steps, voc.data.batch_size, voc.optim.lr, tuple(voc.optim.decay_steps), voc.optim.weight_decay) == (
        120_000, 32, 1e-3, (80_000, 100_000), 5e-4)
    ssd512 = config_cli.load_config("experiments/ssd512_vgg16_voc.py")
    assert (ssd512.model.name, ssd512.model.image_size, ssd512.num_steps) == ("ssd512_vgg16", 512, 120_000)


def test_train_command_line():
    config, workdir, _ = train_cmd.parse_args(["--config.runlocal=True", "--config.optim.lr=0.5", "--workdir=/tmp/x"])
    assert config.name == "demo" and config.runlocal and config.num_steps == 4 and config.optim.lr == 0.5
    assert workdir == "/tmp/x"
    config, workdir, _ = train_cmd.parse_args([])
    assert config.num_steps == 3600 and config.model.name == "ssd_compact" and config.model.depth == 2 and workdir.endswith("runs/demo")
    assert train_cmd.main(["--config.optim.lrr=1"]) == 2


def test_augment_config_knobs():
    from experiments.base import base_config
    from ssd_jax import training_loop
    from ssd_jax.data import transforms

    c = base_config()
    assert training_loop.augment_config(c.data) == transforms.AugmentConfig()  # the paper's by default
    c.data.photometric, c.data.expand_p, c.data.max_expand, c.data.crop = False, 0.0, 2.0, False
    a = training_loop.augment_config(c.data)
    assert (a.photometric, a.expand_p, a.max_expand, a.min_ious) == (False, 0.0, 2.0, (None,))
    c.data.augment = False
    assert training_loop.augment_config(c.data) is None
    c.data.augment, c.data.expand_p = True, 1.5
    with pytest.raises(ValueError, match="expand_p"):
        training_loop.augment_config(c.data)


def test_model_switch_on_the_demo_config_ignores_compact_options():
    # the demo sets ssd_compact's depth 2; switching model.name alone must still build
    from flax import nnx

    from experiments.demo import get_config
    from ssd_jax import training_loop

    c = get_config()
    assert c.model.depth == 2
    c.model.name, c.model.image_size, c.model.width = "ssdlite_mobilenetv2", 96, 0.25
    model = training_loop.build_model(c, 3, nnx.Rngs(0))
    assert model.name == "ssdlite_mobilenetv2"
    c.model.name = "ssd_compact"
    deep = training_loop.build_model(c, 3, nnx.Rngs(0))
    assert deep.extractor.more is not None and len(deep.extractor.more[0]) == 1
