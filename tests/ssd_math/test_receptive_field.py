"""ssd_jax.receptive_field: the seed document's example and VGG16's known fields."""

import pytest

from ssd_jax.receptive_field import Layer, final_field, receptive_fields


def test_seed_example_5x5_k3_p1_s2_twice():
    # Seed: a 5x5 input, k=3, p=1, s=2 gives a 3x3 map; the same conv again gives 2x2.
    conv = dict(kernel=3, stride=2, padding=1)
    first, second = receptive_fields([Layer("conv1", **conv), Layer("conv2", **conv)], 5)
    assert (first.size, first.jump, first.receptive_field, first.start) == (3, 2, 3, 0.5)
    # r2 = 3 + (3 - 1) * 2 = 7 (the whole padded input), j2 = 4
    assert (second.size, second.jump, second.receptive_field, second.start) == (2, 4, 7, 0.5)
    assert second.centre(1) == 4.5


def test_dilation_widens_the_kernel():
    (info,) = receptive_fields([Layer("fc6", kernel=3, padding=6, dilation=6)], 19)
    assert info.size == 19  # SSD's fc6 keeps 19x19
    assert info.receptive_field == 13  # effective kernel 6 * 2 + 1


def test_ceil_mode_pooling_gives_ssd300_38x38():
    pool = Layer("pool3", kernel=2, stride=2, ceil_mode=True)
    assert pool.output_size(75) == 38
    assert Layer("pool3", kernel=2, stride=2).output_size(75) == 37
    # PyTorch's rule: a window that would start in the right padding is dropped.
    # 5 + 2 pads, k=2, s=2: ceil gives 4 windows, but the 4th starts in the right padding.
    assert Layer("p", kernel=2, stride=2, padding=1, ceil_mode=True).output_size(5) == 3
    assert Layer("p", kernel=3, stride=2, padding=1, ceil_mode=True).output_size(4) == 3


def test_vgg16_conv4_3_field_is_92_pixels():
    conv = lambda n: Layer(n, kernel=3, padding=1)  # noqa: E731
    pool = lambda n: Layer(n, kernel=2, stride=2)  # noqa: E731
    stack = [conv("1_1"), conv("1_2"), pool("p1"), conv("2_1"), conv("2_2"), pool("p2"),
             conv("3_1"), conv("3_2"), conv("3_3"), pool("p3"), conv("4_1"), conv("4_2"), conv("4_3")]
    info = final_field(stack, 224)
    assert (info.size, info.jump, info.receptive_field) == (28, 8, 92)


def test_bad_layers_and_too_small_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="kernel"):
        Layer("bad", kernel=0)
    with pytest.raises(ValueError, match="smaller than its effective kernel"):
        Layer("big", kernel=7).output_size(3)
    with pytest.raises(ValueError, match="empty"):
        final_field([], 10)
