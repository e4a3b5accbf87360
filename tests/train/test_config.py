"""ssd_jax.config: the schema from the settings classes, the experiment loader, typed overrides, clear errors."""

import pytest

import dataclasses

from ssd_jax import config as config_lib
from ssd_jax.cli import train_cmd


def test_parse_override():
    assert config_lib.parse_override("--config.optim.lr=0.002") == ("optim.lr", "0.002")
    with pytest.raises(ValueError, match="--config"):
        config_lib.parse_override("--config.optim.lr")


@pytest.mark.parametrize("text,current,expected", [
    ("0.002", 1e-3, 0.002), ("3", 1.0, 3.0), ("7", 1, 7), ("True", False, True), ("no", True, False),
    ("hello", "x", "hello"), ("(80000, 100000)", (1,), (80000, 100000)), ("80000,100000", (), (80000, 100000)),
    ("()", (1, 2), ()), ("[1, 2]", None, [1, 2]),
])
def test_parse_value_by_field_type(text, current, expected):
    assert config_lib.parse_value(text, current) == expected


def test_overrides_apply_with_type_checks_and_clear_errors():
    config = config_lib.load_config("experiments/demo.py")
    config_lib.apply_overrides(config, [("optim.lr", "0.002"), ("optim.decay_steps", "10,20"), ("data.augment", "false")])
    assert config.optim.lr == 0.002 and config.optim.decay_steps == (10, 20) and config.data.augment is False
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr'.*optim.lr"):
        config_lib.apply_overrides(config, [("optim.lrr", "1")])
    with pytest.raises(KeyError, match="unknown config key 'optimm.lr'"):
        config_lib.apply_overrides(config, [("optimm.lr", "1")])
    with pytest.raises(ValueError, match="num_steps=ten.*int"):
        config_lib.apply_overrides(config, [("num_steps", "ten")])
    with pytest.raises(KeyError, match="is a group"):
        config_lib.apply_overrides(config, [("optim", "1")])


def test_experiments_and_their_runlocal_variants_load():
    for name in ("demo", "ssd300_vgg16_voc", "ssd512_vgg16_voc", "ssd300_vgg16_coco", "ssdlite_mobilenetv2_coco"):
        full = config_lib.load_config(f"experiments/{name}.py")
        small = config_lib.load_config(f"experiments/{name}.py:runlocal")
        assert not full.runlocal and small.runlocal and small.num_steps < full.num_steps
    voc = config_lib.load_config("experiments/ssd300_vgg16_voc.py")
    assert (voc.num_steps, voc.data.batch_size, voc.optim.lr, tuple(voc.optim.decay_steps), voc.optim.weight_decay) == (
        120_000, 32, 1e-3, (80_000, 100_000), 5e-4)
    ssd512 = config_lib.load_config("experiments/ssd512_vgg16_voc.py")
    assert (ssd512.model.name, ssd512.model.image_size, ssd512.num_steps) == ("ssd512_vgg16", 512, 120_000)


def test_train_command_line():
    config, workdir, _ = train_cmd.parse_args(["--config.runlocal=True", "--config.optim.lr=0.5", "--workdir=/tmp/x"])
    assert config.name == "demo" and config.runlocal and config.num_steps == 4 and config.optim.lr == 0.5
    assert workdir == "/tmp/x"
    config, workdir, _ = train_cmd.parse_args([])
    assert config.num_steps == 3600 and config.model.name == "ssd_compact" and config.model.depth == 2 and workdir.endswith("runs/demo")
    assert train_cmd.main(["--config.optim.lrr=1"]) == 2


def test_augment_settings_from_the_data_section():
    from experiments.base import base_config
    from ssd_jax.data import transforms

    c = base_config()
    assert config_lib.Settings.from_config(c).augment == transforms.AugmentConfig()  # the paper's by default
    assert transforms.AugmentConfig().min_ious == (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
    c.data.photometric, c.data.expand_p, c.data.max_expand, c.data.crop = False, 0.0, 2.0, False
    c.data.hue, c.data.crop_min_ious, c.data.max_trials = 9.0, (0.5,), 7
    a = config_lib.Settings.from_config(c).augment
    assert (a.photometric, a.expand_p, a.max_expand, a.min_ious, a.hue, a.max_trials) == (False, 0.0, 2.0, (None,), 9.0, 7)
    c.data.crop = True
    assert config_lib.Settings.from_config(c).augment.min_ious == (None, 0.5)
    c.data.augment = False
    assert config_lib.Settings.from_config(c).augment is None
    c.data.augment, c.data.expand_p = True, 1.5
    with pytest.raises(ValueError, match="expand_p"):
        config_lib.Settings.from_config(c)


def test_every_settings_field_is_a_config_key_with_its_default():
    """The schema is the settings classes: each field (but the derived ones) is a key of its
    section, its default is the field's, and Settings.from_config gives the defaults back."""
    c = config_lib.default_config()
    for section, classes in config_lib.SECTIONS.items():
        node = c if not section else c[section]
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.name in cls.DERIVED:
                    continue
                assert f.name in node, f"{section}.{f.name}"
                assert node[f.name] == f.default, f"{section}.{f.name}"
    s = config_lib.Settings.from_config(c)
    assert s.optim.batch_size == c.data.batch_size and s.optim.total_steps == c.num_steps
    assert s.loss.variances == (0.1, 0.2) and s.eval.candidates_per_class == 400 and s.model.conv_wgrad == "auto"


def test_canvas_side_follows_the_dataset_unless_set():
    from ssd_jax.data.config import DataConfig

    assert DataConfig(builtin_max_side=190).canvas_side == 192  # the largest image, to a multiple of 8
    assert DataConfig(dataset="voc", voc_root="/v").canvas_side == 512
    assert DataConfig(builtin_max_side=190, canvas_size=256).canvas_side == 256


def test_augmentation_runs_on_the_device_of_an_accelerator_unless_set():
    from ssd_jax import builders
    from ssd_jax.data.config import DataConfig

    auto = DataConfig()
    assert auto.augment_on == "auto" and builders.augment_on(auto) == "host"  # these tests run on the CPU
    assert [builders.augment_on(auto, b) for b in ("cpu", "gpu", "tpu")] == ["host", "device", "device"]
    assert builders.augment_on(DataConfig(augment_on="device"), "cpu") == "device"
    assert builders.augment_on(DataConfig(augment_on="host"), "gpu") == "host"


def test_settings_validate_each_section_and_name_the_key():
    for key, value, match in [("model.compute_dtype", "float16", "compute_dtype"), ("data.dataset", "kitti", "dataset"),
                              ("eval.metric", "f1", "metric"), ("optim.optimizer", "lion", "optimizer"),
                              ("loss.variances", (0.1,), "variances"), ("num_steps", 0, "num_steps"),
                              ("model.conv_wgrad", "fast", "conv_wgrad"), ("data.min_scale", 0.0, "min_scale"),
                              ("data.augment_on", "gpu", "augment_on"), ("data.canvas_size", 300, "canvas_size")]:
        c = config_lib.default_config()
        *parents, leaf = key.split(".")
        node = c[parents[0]] if parents else c
        node[leaf] = value
        with pytest.raises(ValueError, match=match):
            config_lib.Settings.from_config(c)
    c = config_lib.default_config()
    c.data.photometrics = False  # a typo in an experiment file
    with pytest.raises(ValueError, match=r"data.photometrics \(did you mean data.photometric\?\)"):
        config_lib.Settings.from_config(c)
    c = config_lib.default_config()
    c.data.dataset = "voc"
    with pytest.raises(ValueError, match="voc_root"):
        config_lib.Settings.from_config(c)
    c.data.voc_root = "/nonexistent/VOCdevkit"
    with pytest.raises(ValueError, match="not a folder"):
        config_lib.Settings.from_config(c).check_paths()


def test_one_loader_for_files_and_modules(tmp_path):
    """Files of the experiments package import as that package (once); other files load by
    path and can import from it; a sweep file is loaded once for its config and its points."""
    import sys

    by_path = config_lib.load_config("experiments/demo.py:runlocal")
    by_module = config_lib.load_config("experiments.demo:runlocal")
    assert by_path == by_module and "experiments.demo" in sys.modules
    own = tmp_path / "mine.py"
    own.write_text("from experiments.demo import get_config as demo\n"
                   "def get_config(arg=None):\n    c = demo(arg)\n    c.name = 'mine'\n    return c\n")
    mine = config_lib.load_config(f"{own}:runlocal")
    assert mine.name == "mine" and mine.runlocal
    with pytest.raises(FileNotFoundError):
        config_lib.load_config(str(tmp_path / "missing.py"))
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(AttributeError, match="get_config"):
        config_lib.load_config(str(tmp_path / "bad.py"))


def test_model_switch_on_the_demo_config_ignores_compact_options():
    # the demo sets ssd_compact's depth 2; switching model.name alone must still build
    from flax import nnx

    from experiments.demo import get_config
    from ssd_jax import builders

    c = get_config()
    assert c.model.depth == 2
    c.model.name, c.model.image_size, c.model.width = "ssdlite_mobilenetv2", 96, 0.25
    model = builders.build_model(config_lib.Settings.from_config(c).model, 3, nnx.Rngs(0))
    assert model.name == "ssdlite_mobilenetv2"
    c.model.name = "ssd_compact"
    deep = builders.build_model(config_lib.Settings.from_config(c).model, 3, nnx.Rngs(0))
    assert deep.extractor.more is not None and len(deep.extractor.more[0]) == 1
