"""Map torchvision weights onto our networks (state dicts given as name -> numpy array).

* :func:`from_torchvision_ssd300`: torchvision ``ssd300_vgg16`` state dict -> our
  ``ssd300_vgg16`` params, such that ``model(x)`` equals torchvision's
  ``model.head(model.backbone(x))`` (flattened as its ``SSDScoringHead`` does) for the same
  normalised input. torchvision's ``num_classes`` counts the background: 21 -> our 20.
* :func:`from_torchvision_ssdlite_v3`: torchvision ``ssdlite320_mobilenet_v3_large`` state
  dict -> our ``ssdlite_mobilenetv3`` params and batch-norm statistics (the same network),
  such that ``model(x)`` equals torchvision's ``model.head(model.backbone(x))``.
* :func:`from_torchvision_vgg16`: torchvision ImageNet ``vgg16`` state dict -> our VGG16
  backbone as the SSD paper initialises it: conv1_1..conv5_3 copied, fc6/fc7 "reduced"
  (below). The extras, L2Norm scale and heads are not touched (partial tree).

The reduced fc6/fc7 (the SSD authors' ``VGG_ILSVRC_16_layers_fc_reduced``, following
DeepLab / ParseNet: "we convert fc6 and fc7 to convolutional layers, subsample parameters
from fc6 and fc7", SSD paper section 3): fc6's ``[4096, 25088]`` weight is viewed as the
7x7 convolution ``[4096, 512, 7, 7]`` it is on pool5, then every 4th output unit and every
3rd spatial tap are kept -> ``[1024, 512, 3, 3]`` at taps (0, 3, 6); with pool5 changed to
stride 1 the kept taps are 6 apart on the new grid, hence dilation 6. fc7 ``[4096, 4096]``
keeps every 4th output and every 4th input unit -> ``[1024, 1024, 1, 1]``; biases every 4th.
This is exactly sgrvinod/a-PyTorch-Tutorial-to-Object-Detection ``model.py``
``VGGBase.load_pretrained_layers``: ``decimate(fc6.view(4096, 512, 7, 7), m=[4, None, 3, 3])``,
``decimate(fc7.view(4096, 4096, 1, 1), m=[4, 4, None, None])`` with ``decimate`` =
``index_select(arange(0, size, step=m))``, i.e. indices starting at 0. (torchvision's own
``ssd300_vgg16`` does *not* do this: its fc6/fc7 are Xavier-initialised and its
``IMAGENET1K_FEATURES`` backbone weights have no classifier.)

Layout conversions: torch ``OIHW`` kernels -> our ``HWIO``; torch NCHW activations vs our
NHWC don't matter for parameters. Head channel order (``a * K + k``) is the same in both.

Reading ``.pth`` files needs torch (:func:`read_pth`); everything else is numpy.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: torchvision ``vgg16().features`` index of each conv, in order.
_VGG_FEATURE_INDEX = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12,
    "conv3_3": 14, "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26,
    "conv5_3": 28,
}


def _ssd300_names() -> dict[str, str]:
    """our param path prefix -> torchvision ssd300_vgg16 module prefix (``.weight/.bias``)."""
    names = {f"extractor/{n}": f"backbone.features.{i}" for n, i in _VGG_FEATURE_INDEX.items() if i <= 21}
    names.update({
        "extractor/conv5_1": "backbone.extra.0.1",
        "extractor/conv5_2": "backbone.extra.0.3",
        "extractor/conv5_3": "backbone.extra.0.5",
        "extractor/fc6": "backbone.extra.0.7.1",
        "extractor/fc7": "backbone.extra.0.7.3",
    })
    for k, n in enumerate(("conv8", "conv9", "conv10", "conv11"), start=1):
        names[f"extractor/{n}_1"] = f"backbone.extra.{k}.0"
        names[f"extractor/{n}_2"] = f"backbone.extra.{k}.2"
    for k in range(6):
        names[f"head/cls/{k}"] = f"head.classification_head.module_list.{k}"
        names[f"head/box/{k}"] = f"head.regression_head.module_list.{k}"
    return names


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]`` float32."""
    w = np.asarray(w, np.float32)
    if w.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {w.shape}")
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _get(sd: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
    try:
        return np.asarray(sd[key])
    except KeyError:
        raise KeyError(f"{source} state dict has no {key!r} (has {len(sd)} entries, e.g. {sorted(sd)[:3]})") from None


def from_torchvision_ssd300(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """torchvision ``ssd300_vgg16`` state dict -> (flat params for ``ssd300_vgg16``, C).

    C = object classes (torchvision ``num_classes`` - 1). Every entry of the state dict
    must be used (an unexpected key means a different architecture).
    """
    src = "torchvision ssd300_vgg16"
    flat: dict[str, np.ndarray] = {"extractor/conv4_3_norm/scale": np.asarray(_get(sd, "backbone.scale_weight", src), np.float32)}
    used = {"backbone.scale_weight"}
    for ours, theirs in _ssd300_names().items():
        flat[f"{ours}/kernel"] = conv_kernel(_get(sd, f"{theirs}.weight", src))
        flat[f"{ours}/bias"] = np.asarray(_get(sd, f"{theirs}.bias", src), np.float32)
        used |= {f"{theirs}.weight", f"{theirs}.bias"}
    extra = sorted(set(sd) - used)
    if extra:
        raise KeyError(f"{src}: unexpected entries {extra[:5]} (an SSD512 / other architecture?)")
    a0 = 4  # boxes per cell of map 0 in ssd300_vgg16
    cls0 = flat["head/cls/0/bias"].shape[0]
    if cls0 % a0:
        raise ValueError(f"{src}: classification head 0 has {cls0} outputs, not a multiple of {a0}")
    return flat, cls0 // a0 - 1


def reduce_fc6(weight: np.ndarray, bias: np.ndarray, in_channels: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """fc6 ``[O, in*7*7]`` -> dilated 3x3 conv: kernel ``[3, 3, in, O/4]`` (HWIO), bias ``[O/4]``.

    Every 4th output unit (from 0) and spatial taps (0, 3, 6) of the 7x7 view.
    """
    weight = np.asarray(weight, np.float32)
    o = weight.shape[0]
    if weight.shape[1] != in_channels * 49:
        raise ValueError(f"fc6 weight {weight.shape}: expected {in_channels}*7*7 = {in_channels * 49} inputs")
    w = weight.reshape(o, in_channels, 7, 7)[::4, :, ::3, ::3]
    return conv_kernel(w), np.asarray(bias, np.float32)[::4]


def reduce_fc7(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fc7 ``[O, I]`` -> 1x1 conv: kernel ``[1, 1, I/4, O/4]`` (HWIO), bias ``[O/4]``."""
    weight = np.asarray(weight, np.float32)
    w = weight[::4, ::4]
    return np.ascontiguousarray(w.T)[None, None], np.asarray(bias, np.float32)[::4]


def _module_indices(sd: Mapping[str, np.ndarray], prefix: str) -> list[int]:
    """The sorted integer children of module ``prefix`` in a state dict."""
    n = prefix.count(".") + 1
    return sorted({int(k.split(".")[n]) for k in sd if k.startswith(prefix + ".") and k.split(".")[n].isdigit()})


def from_torchvision_ssdlite_v3(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """torchvision ``ssdlite320_mobilenet_v3_large`` state dict -> (flat params, flat
    batch-norm statistics, C) for our ``ssdlite_mobilenetv3`` (width 1).

    torchvision splits the backbone at the expansion of the last stride-2 block
    (``features.0`` ends with it, ``features.1`` starts with that block's depthwise
    layer); ours keeps the block whole and taps its expansion. Each inverted residual
    holds an optional expansion, the depthwise layer, an optional squeeze-excitation and
    the projection, in that order. Every entry of the state dict must be used.
    """
    src = "torchvision ssdlite320_mobilenet_v3_large"
    params: dict[str, np.ndarray] = {}
    stats: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return np.asarray(_get(sd, key, src), np.float32)

    def conv_bn(ours: str, theirs: str) -> None:  # Conv2dNormActivation: .0 conv, .1 batch norm
        params[f"{ours}/conv/kernel"] = conv_kernel(take(f"{theirs}.0.weight"))
        params[f"{ours}/bn/scale"] = take(f"{theirs}.1.weight")
        params[f"{ours}/bn/bias"] = take(f"{theirs}.1.bias")
        stats[f"{ours}/bn/mean"] = take(f"{theirs}.1.running_mean")
        stats[f"{ours}/bn/var"] = take(f"{theirs}.1.running_var")
        used.add(f"{theirs}.1.num_batches_tracked")

    def block(ours: str, layers: list[str]) -> None:  # an inverted residual's layers, in order
        convs = [p for p in layers if f"{p}.fc1.weight" not in sd]
        roles = ("expand", "depthwise", "project") if len(convs) == 3 else ("depthwise", "project")
        if len(convs) != len(roles):
            raise ValueError(f"{src}: block {ours} has {len(convs)} convolution layers, expected 2 or 3")
        for role, p in zip(roles, convs):
            conv_bn(f"{ours}/{role}", p)
        for p in layers:
            if p not in convs:
                for fc in ("fc1", "fc2"):
                    params[f"{ours}/se/{fc}/kernel"] = conv_kernel(take(f"{p}.{fc}.weight"))
                    params[f"{ours}/se/{fc}/bias"] = take(f"{p}.{fc}.bias")

    first, second = _module_indices(sd, "backbone.features.0"), _module_indices(sd, "backbone.features.1")
    if not first or not second:
        raise KeyError(f"{src}: no backbone.features.0 / .1 (not an SSDLite MobileNet state dict)")
    conv_bn("extractor/stem", "backbone.features.0.0")
    blocks = [[f"backbone.features.0.{i}.block.{j}" for j in _module_indices(sd, f"backbone.features.0.{i}.block")]
              for i in first[1:-1]]
    blocks.append([f"backbone.features.0.{first[-1]}"]  # the split block: its expansion, then the rest
                  + [f"backbone.features.1.0.{j}" for j in _module_indices(sd, "backbone.features.1.0")])
    blocks += [[f"backbone.features.1.{i}.block.{j}" for j in _module_indices(sd, f"backbone.features.1.{i}.block")]
               for i in second[1:-1]]
    for b, layers in enumerate(blocks):
        block(f"extractor/blocks/{b}", layers)
    conv_bn("extractor/last", f"backbone.features.1.{second[-1]}")
    for k in _module_indices(sd, "backbone.extra"):
        for j, role in enumerate(("reduce", "depthwise", "expand")):
            conv_bn(f"extractor/extras/{k}/{role}", f"backbone.extra.{k}.{j}")
    for ours, theirs in (("cls", "classification_head"), ("box", "regression_head")):
        for k in _module_indices(sd, f"head.{theirs}.module_list"):
            p = f"head.{theirs}.module_list.{k}"
            conv_bn(f"head/{ours}/{k}/depthwise", f"{p}.0")
            params[f"head/{ours}/{k}/pointwise/kernel"] = conv_kernel(take(f"{p}.1.weight"))
            params[f"head/{ours}/{k}/pointwise/bias"] = take(f"{p}.1.bias")
    extra = sorted(set(sd) - used)
    if extra:
        raise KeyError(f"{src}: unexpected entries {extra[:5]} (another architecture?)")
    a0 = 6  # boxes per cell on every map of torchvision's SSDLite
    cls0 = params["head/cls/0/pointwise/bias"].shape[0]
    if cls0 % a0:
        raise ValueError(f"{src}: classification head 0 has {cls0} outputs, not a multiple of {a0}")
    return params, stats, cls0 // a0 - 1


def ssdlite_v3_model(params: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray], num_classes: int, *,
                     conv=None):
    """Our ``ssdlite_mobilenetv3`` holding exactly ``params`` and batch-norm ``stats`` of
    :func:`from_torchvision_ssdlite_v3` (built abstractly: no random draw is made and
    overwritten). ``conv``: the model's :class:`~ssd_jax.models.layers.ConvChoices`."""
    from flax import nnx

    from ssd_jax.models import factory, params_io

    model = nnx.eval_shape(lambda: factory.build_model("ssdlite_mobilenetv3", num_classes, conv=conv))
    params_io.assign(model, params, strict=True)
    params_io.assign(model, stats, variables=nnx.BatchStat, strict=True)
    return model


def from_torchvision_vgg16(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision ImageNet ``vgg16`` state dict -> flat partial params of the VGG16 extractor.

    Works for ``ssd300_vgg16`` and ``ssd512_vgg16`` (same backbone names). fc6/fc7 are the
    classifier's first two layers, subsampled (:func:`reduce_fc6`, :func:`reduce_fc7`);
    a checkpoint whose classifier holds non-finite values (torchvision's feature-only
    ``VGG16_Weights.IMAGENET1K_FEATURES``, which keeps no valid classifier) gives the conv
    layers alone, and fc6/fc7 keep their initialisation, as in torchvision's ``ssd300_vgg16``.
    """
    src = "torchvision vgg16"
    flat = {}
    for name, i in _VGG_FEATURE_INDEX.items():
        flat[f"extractor/{name}/kernel"] = conv_kernel(_get(sd, f"features.{i}.weight", src))
        flat[f"extractor/{name}/bias"] = np.asarray(_get(sd, f"features.{i}.bias", src), np.float32)
        if not (np.isfinite(flat[f"extractor/{name}/kernel"]).all() and np.isfinite(flat[f"extractor/{name}/bias"]).all()):
            raise ValueError(f"{src}: features.{i} holds non-finite values")
    fc = [np.asarray(_get(sd, f"classifier.{i}.{p}", src), np.float32) for i in (0, 3) for p in ("weight", "bias")]
    if not all(np.isfinite(a).all() for a in fc):
        return flat
    k6, b6 = reduce_fc6(fc[0], fc[1])
    k7, b7 = reduce_fc7(fc[2], fc[3])
    if k6.shape != (3, 3, 512, 1024) or k7.shape != (1, 1, 1024, 1024):
        raise ValueError(f"{src}: reduced fc6/fc7 have shapes {k6.shape}/{k7.shape}; is this VGG16 with 4096-unit classifiers?")
    flat.update({"extractor/fc6/kernel": k6, "extractor/fc6/bias": b6, "extractor/fc7/kernel": k7, "extractor/fc7/bias": b7})
    return flat


def read_pth(path: str) -> dict[str, np.ndarray]:
    """A torch ``.pth`` state dict (or ``{"model": state_dict}``) as name -> float32 numpy."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch, which is not a dependency of ssd_jax's default install; "
            "install the optional extra: pip install -e '.[torch]'"
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    return {k: v.detach().cpu().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
