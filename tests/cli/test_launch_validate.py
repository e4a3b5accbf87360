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


def test_a_broken_voc_tree_names_every_file(devkit, capsys):
    annotations = os.path.join(devkit, "VOC2007", "Annotations")
    for stem, old, new in (("000001", "<difficult>1</difficult>", "<difficult>yes</difficult>"),
                           ("000002", "<name>car</name>", "<name>lorry</name>")):
        xml = os.path.join(annotations, f"{stem}.xml")
        text = open(xml).read()
        open(xml, "w").write(text.replace(old, new))
    os.remove(os.path.join(annotations, "000100.xml"))
    os.remove(os.path.join(devkit, "VOC2007", "JPEGImages", "000003.jpg"))
    assert main(_voc_args(devkit)) == 1
    out = capsys.readouterr().out
    # every problem, each with its file; the other records are read, counted and decoded
    assert "000001.xml (record '2007/000001') object 1 (person): <difficult> is 'yes', expected 0 or 1" in out
    assert "000002.xml (record '2007/000002') object 0: class 'lorry' is not in the class list" in out
    assert "lists '000100' but its annotation" in out and "000100.xml is missing" in out
    assert "000003.jpg" in out and "4 problem(s)" in out
    assert "images 2 (decoded 1), objects 3" in out  # train: 000000 and 000003 (missing image)
    assert "images 1 (decoded 1), objects 0" in out  # eval: 000101 alone


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
    assert "images 3 (decoded 2)" in out and "boxes clipped to the image 1, dropped 1" in out
    assert "problem: record 20 image" in out and "b.jpg: cannot decode" in out and "1 problem(s)" in out

    # Problems in the JSON: all reported, each naming the file and the annotation or image.
    data["annotations"][1]["id"] = 1
    data["annotations"][2]["bbox"] = ["1", 2, 3, 4]
    data["annotations"].append({"id": 11, "image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0})
    data["images"].append({"id": 40, "file_name": "d.jpg", "width": "wide", "height": 10})
    with open(json_path, "w") as f:
        json.dump(data, f)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"{json_path}: duplicate annotation id 1" in out
    assert f"{json_path}: annotation {data['annotations'][2]['id']} has bbox ['1', 2, 3, 4]" in out
    assert f"{json_path}: annotation 11 refers to unknown image id 99" in out
    assert f"{json_path}: image 40 has size 'wide'x10, expected positive numbers" in out
    assert "5 problem(s)" in out  # the four above and the corrupt image


def test_bad_config_is_exit_2(capsys):
    assert main(["validate", "--config.data.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
