"""``launch.py validate`` on good and broken VOC trees and COCO JSONs (in this process)."""

import json
import os

import pytest

from ssd_jax.cli import main

CAR, PERSON = ("car", (3, 4, 40, 30), 0), ("person", (20, 10, 60, 45), 1)


@pytest.fixture
def devkit(tmp_path, make_voc):
    root = str(tmp_path / "devkit")
    make_voc(root, {"2007": {f"{i:06d}": (64, 48, [CAR, PERSON] if i % 2 else [CAR]) for i in range(4)}}, split="trainval")
    make_voc(root, {"2007": {"000100": (64, 48, [CAR]), "000101": (64, 48, [])}}, split="test")
    return root


def _voc_args(root):
    return ["validate", "--config=experiments/ssd300_vgg16_voc.py", f"--config.data.voc_root={root}",
            "--config.data.voc_train=('2007/trainval',)"]


def test_a_good_voc_tree_is_reported_and_passes(devkit, capsys):
    assert main(_voc_args(devkit)) == 0
    out = capsys.readouterr().out
    assert "train: voc 2007/trainval" in out and "eval: voc 2007/test" in out
    assert "images 4 (decoded 4), objects 6 (2 difficult/crowd), images without objects 0" in out
    assert "images 2 (decoded 2), objects 1 (0 difficult/crowd), images without objects 1" in out
    assert "ok: the data can be trained on" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert ["car", "4"] in rows and ["person", "2"] in rows and ["car", "1"] in rows


def test_a_broken_voc_tree_names_the_file(devkit, capsys):
    xml = os.path.join(devkit, "VOC2007", "Annotations", "000001.xml")
    text = open(xml).read().replace("<difficult>1</difficult>", "<difficult>yes</difficult>")
    open(xml, "w").write(text)
    assert main(_voc_args(devkit)) == 1
    out = capsys.readouterr().out
    assert "the annotations cannot be read" in out and "000001.xml" in out and "'yes', expected 0 or 1" in out


def test_a_coco_json_with_a_corrupt_image_and_clipped_and_dropped_boxes(tmp_path, make_coco, tiny_coco_dict, capsys):
    data = tiny_coco_dict
    data["annotations"][0]["bbox"] = [2, 3, 38.5, 5]  # x + w = 40.5 in a 40-wide image: clipped
    data["annotations"].append({"id": 9, "image_id": 30, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0})  # empty
    json_path, images = make_coco(str(tmp_path), data)
    with open(os.path.join(images, "b.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    args = ["validate", "--config=experiments/ssd300_vgg16_coco.py", f"--config.data.coco_train_json={json_path}",
            f"--config.data.coco_train_images={images}", f"--config.data.coco_val_json={json_path}",
            f"--config.data.coco_val_images={images}"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "train+eval: coco instances.json" in out  # the same files: one report
    assert "images 3 (decoded 2)" in out and "boxes clipped to the image 2, dropped 2" in out  # train and eval reads
    assert "problem: record 20 image" in out and "b.jpg: cannot decode" in out and "1 problem(s)" in out

    data["annotations"][1]["id"] = 1
    with open(json_path, "w") as f:
        json.dump(data, f)
    assert main(args) == 1
    assert "duplicate annotation id 1" in capsys.readouterr().out


def test_bad_config_is_exit_2(capsys):
    assert main(["validate", "--config.data.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
