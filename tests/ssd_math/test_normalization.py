"""The input conventions of :mod:`ssd_jax.normalization`, against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import normalization
from ssd_jax.models import factory
from ssd_jax.models.config import NORMALIZATIONS


def test_torchvision_convention_by_hand():
    px = np.array([[[[255, 0, 128]]]], np.uint8)
    tv = normalization.TORCHVISION(px)
    assert tv.dtype == np.float32 and tv.shape == px.shape
    np.testing.assert_allclose(tv[0, 0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
                               rtol=1e-5)
    mean = np.array([[[123.675, 116.28, 103.53]]], np.float32)  # 255 * ImageNet mean: normalises to 0
    np.testing.assert_allclose(normalization.TORCHVISION(mean), 0, atol=1e-5)
    assert normalization.TORCHVISION.mean_pixel == pytest.approx((123.675, 116.28, 103.53))


def test_caffe_vgg_convention_by_hand():
    """RGB pixels minus Caffe's BGR mean (104, 117, 123) reordered to RGB; std 1; RGB out."""
    px = np.array([[[255, 0, 128], [123, 117, 104]]], np.uint8)
    out = normalization.CAFFE_VGG(px)
    np.testing.assert_allclose(out[0, 0], [255 - 123.0, 0 - 117.0, 128 - 104.0], atol=0.01)
    np.testing.assert_allclose(out[0, 1], 0, atol=0.01)
    assert normalization.CAFFE_VGG.mean_pixel == pytest.approx((123.0, 117.0, 104.0), abs=0.01)
    assert normalization.CAFFE_VGG.std_pixel == pytest.approx((1.0, 1.0, 1.0))


def test_symmetric_convention_by_hand():
    """torchvision's SSDLite: pixels to [-1, 1]."""
    out = normalization.SYMMETRIC(np.array([[[0, 255, 51]]], np.uint8))
    np.testing.assert_allclose(out[0, 0], [-1.0, 1.0, 51 / 127.5 - 1.0], rtol=1e-6)
    assert normalization.SYMMETRIC.mean_pixel == pytest.approx((127.5, 127.5, 127.5))


@pytest.mark.parametrize("name", sorted(normalization.CONVENTIONS))
def test_host_and_device_give_the_same_values(name):
    """The pipeline normalises with NumPy, device code with jax.numpy: the same values (to
    float32 rounding: XLA divides by a constant as a multiply by its reciprocal)."""
    conv = normalization.get(name)
    px = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    host = conv(px)
    device = jax.jit(lambda x: conv(x, xp=jnp))(px)
    np.testing.assert_allclose(np.asarray(device), host, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(conv.invert(host), px)


def test_names_and_errors():
    assert NORMALIZATIONS == ("auto", "torchvision", "caffe_vgg", "symmetric")
    assert factory.default_normalization("ssd300_vgg16") == "caffe_vgg"
    assert factory.default_normalization("ssdlite_mobilenetv3") == "torchvision"
    with pytest.raises(ValueError, match="unknown normalisation 'imagenet'"):
        normalization.get("imagenet")
    with pytest.raises(ValueError, match=r"RGB images \[\.\.\., 3\]"):
        normalization.TORCHVISION(np.zeros((2, 2, 4), np.uint8))
