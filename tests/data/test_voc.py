"""VOC reader on a tiny generated VOCdevkit."""

import numpy as np
import pytest

from ssd_jax.data.voc import VOC_CLASSES, voc_source


@pytest.fixture
def devkit(tmp_path, make_voc):
    return make_voc(
        str(tmp_path),
        {
            "2007": {
                "000005": (50, 40, [("chair", (1, 1, 50, 40), 0), ("person", (10, 5, 20, 30), 1)]),
                "000007": (30, 20, [("car", (3, 4, 12, 9), 0)]),
            },
            "2012": {"2008_000002": (24, 32, [("tvmonitor", (2, 2, 23, 31), 0)])},
        },
    )


def test_twenty_classes():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"


def test_reads_07_plus_12_in_order(devkit):
    src = voc_source(devkit, [("2007", "trainval"), ("2012", "trainval")])
    assert len(src) == 3 and src.num_classes == 20
    assert [r.image_id for r in src.records] == ["2007/000005", "2007/000007", "2012/2008_000002"]
    r = src.records[0]
    assert (r.width, r.height) == (50, 40)
    assert r.image_path.endswith("VOC2007/JPEGImages/000005.jpg")
    # 1-based inclusive -> 0-based continuous: (xmin - 1, ymin - 1, xmax, ymax)
    np.testing.assert_array_equal(r.boxes, [[0, 0, 50, 40], [9, 4, 20, 30]])
    assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int32
    np.testing.assert_array_equal(r.labels, [VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("person") + 1])
    np.testing.assert_array_equal(r.difficult, [False, True])
    assert src.records[2].labels.tolist() == [20]


def test_difficult_kept_in_records(devkit):
    src = voc_source(devkit, [("2007", "trainval")])
    assert sum(int(r.difficult.sum()) for r in src.records) == 1


def test_missing_split_file_is_named(devkit):
    with pytest.raises(FileNotFoundError, match="VOC2012/ImageSets/Main/test.txt"):
        voc_source(devkit, [("2012", "test")])
