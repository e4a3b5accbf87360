"""SSD networks in Flax NNX: VGG16 SSD300/SSD512, MobileNetV2 SSDLite, heads, factory.

See :mod:`ssd_jax.models.ssd` for the pure-function (split / apply) training pattern.
"""

from ssd_jax.models.factory import (
    MODEL_NAMES,
    build_model,
    default_normalization,
    default_prior_spec,
    network_feature_sizes,
    ssdlite_prior_spec,
)
from ssd_jax.models.layers import ConvChoices, resolve_conv_choices
from ssd_jax.models.ssd import SSD, apply, count_params, merge, split

__all__ = [
    "MODEL_NAMES", "SSD", "ConvChoices", "apply", "build_model", "count_params", "default_normalization",
    "default_prior_spec", "merge", "network_feature_sizes", "resolve_conv_choices", "split", "ssdlite_prior_spec",
]
