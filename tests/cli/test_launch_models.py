"""launch.py inspect (model tables, --draw) and convert (error paths) for the networks."""

import importlib.util

import pytest

from ssd_jax.cli import main


def test_inspect_priors_still_works(capsys):
    assert main(["inspect", "--priors", "SSD512_VOC"]) == 0
    assert "total priors: 24564" in capsys.readouterr().out


def test_inspect_model_prints_receptive_fields(capsys):
    assert main(["inspect", "--model", "ssd300_vgg16"]) == 0
    out = capsys.readouterr().out
    assert "conv4_3  38x38     8   92" in out and "total priors: 8732 (= predictions)" in out


def test_inspect_light_model_any_size(capsys):
    assert main(["inspect", "--model", "ssdlite_mobilenetv2", "--image-size", "160", "--width", "0.5"]) == 0
    assert "block13.expand  10x10" in capsys.readouterr().out


def test_inspect_config(tmp_path, capsys):
    """An experiment file of the user's own, read through the one loader and schema."""
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from experiments.base import base_config\n"
                   "def get_config(arg=None):\n    c = base_config()\n    c.model.name = 'ssd512_vgg16'\n"
                   "    c.model.image_size = 512\n    return c\n")
    assert main(["inspect", "--config", str(cfg), "--num-classes", "80"]) == 0
    out = capsys.readouterr().out
    assert "80 classes" in out and "512" in out
    bad = tmp_path / "bad.py"
    bad.write_text("from experiments.base import base_config\n"
                   "def get_config(arg=None):\n    c = base_config()\n    c.model.nmae = 'x'\n    return c\n")
    with pytest.raises(SystemExit):
        main(["inspect", "--config", str(bad)])
    assert "model.nmae (did you mean model.name?)" in capsys.readouterr().err


def test_inspect_demo_config_shows_its_depth(capsys):
    # experiments/demo.py: ssd_compact with depth 2, so the stride-4 map's RF is 15 + 2 * 4
    assert main(["inspect", "--config", "experiments/demo.py"]) == 0
    out = capsys.readouterr().out
    assert "s4  40x40     4   23" in out and "total priors: 8552 (= predictions)" in out


def test_inspect_draw(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed (pip install 'matplotlib>=3.11.2,<3.12'); --draw needs it")
    out = tmp_path / "rf.png"
    assert main(["inspect", "--model", "ssdlite_mobilenetv2", "--image-size", "128", "--draw", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convert_without_torch_or_file_fails_clearly(tmp_path, capsys):
    rc = main(["convert", "--from", "torchvision-ssd300", "--checkpoint", str(tmp_path / "x.pth"), "--workdir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    if importlib.util.find_spec("torch") is None:
        assert "pip install -e '.[torch]'" in err
    else:
        assert "no such checkpoint" in err
