"""Benign/malignant classifiers and their ONNX export wrapper (see busdx.models.contract).

Two architectures:

* ``lite0`` (the default): timm's ``tf_efficientnet_lite0`` with the offline ImageNet weights,
  head = global average pooling -> dropout -> Linear(1280, 1). Because the head is linear after
  the pooling, the class-activation map (each position's linear contribution to the logit) is
  exact: ``mean(cam) + bias == logit``. With ``views=2`` the same backbone sees the lesion crop
  and the whole letterboxed image; their pooled features are concatenated before the linear
  head (Linear(2 x 1280, 1)), so the logit still splits exactly into per-position terms.
* ``resnet50``: the original recipe, torchvision's ResNet50 with its first 100 Keras layers
  frozen and the head GAP -> Dense(1024, ReLU) -> BatchNorm -> Dropout(0.3) -> Dense(1)
  (sigmoid in the loss / at inference). See :func:`freeze_keras_first_100` for the layer count
  and :class:`ExportWrapper` for how its CAM is made exact despite the nonlinear head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from busdx.errors import BusdxError
from busdx.models.storage import store_weights

log = logging.getLogger(__name__)

LITE_ARCHS = ("lite0", "lite1", "lite2")
# test-time augmentation baked into the graph: none, every view mirrored, or the crop only
TTA_MODES = ("none", "flip", "flip_crop")
ARCHS = (*LITE_ARCHS, "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def backbone_name(arch: str) -> str:
    """What the model card calls the backbone of ``arch``."""
    return f"tf_efficientnet_{arch}" if arch in LITE_ARCHS else "torchvision resnet50"


@dataclass(frozen=True)
class ClassifierSpec:
    """What is needed to rebuild a classifier from a checkpoint."""

    arch: str = "lite0"
    dropout: float = 0.3
    weights: str = "imagenet"  # "imagenet", "none" or a path to a state dict
    views: int = 1  # 2: the lesion crop and the whole image through one shared backbone


class _PooledLinear(nn.Module):
    """Global average pooling of ``feature_map``, then ``fc`` after ``dropout``: the head whose
    linearity makes the CAM exact (see :class:`ExportWrapper`).

    The input batch holds ``views`` consecutive images per sample ([N * views, 3, S, S]); their
    pooled features are concatenated per sample ([N, views * C])."""

    views = 1

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feature_map(x).mean(dim=(2, 3))
        return f.reshape(-1, self.views * f.shape[1])

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


class LiteClassifier(_PooledLinear):
    """EfficientNet-Lite0/1/2 features -> GAP -> dropout -> Linear(views x 1280, 1)."""

    mean = LITE_MEAN
    std = LITE_STD

    def __init__(self, dropout: float = 0.3, pretrained: bool = True, variant: str = "lite0",
                 views: int = 1):
        super().__init__()
        import timm

        if views not in (1, 2):
            raise BusdxError(f"a classifier takes 1 or 2 views, not {views}")
        self.views = views

        name = f"tf_efficientnet_{variant}"
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        if pretrained:
            from busdx.models.pretrained import load_lite_weights

            load_lite_weights(self.backbone, name)
        self.num_features = self.backbone.num_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(views * self.num_features, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.fc.parameters()


# Keras's ResNet50 (keras.applications) counts every layer: input, paddings, convs, batch norms,
# activations, adds. Its layers 0-99 are: input_1, conv1_pad, conv1_conv, conv1_bn, conv1_relu,
# pool1_pad, pool1_pool (0-6); conv2_block1 (12 layers with the shortcut: 7-18), conv2_block2/3
# (10 each: 19-38); conv3_block1 (12: 39-50), conv3_block2-4 (10 each: 51-80); conv4_block1
# (12: 81-92); conv4_block2's 1_conv, 1_bn, 1_relu, 2_conv, 2_bn, 2_relu, 3_conv (93-99). Layer
# 100 is conv4_block2_3_bn. In torchvision's names that is conv1, bn1, layer1 (conv2_x), layer2
# (conv3_x), layer3[0] (conv4_block1) and layer3[1]'s conv1, bn1, conv2, bn2, conv3 -- everything
# but layer3[1].bn3 and what follows. Keras (TF2) also runs a frozen BatchNorm in inference mode,
# so the frozen batch norms here stay in eval mode (their running statistics do not move).
RESNET50_FROZEN_PREFIXES = (
    "conv1.",
    "bn1.",
    "layer1.",
    "layer2.",
    "layer3.0.",
    "layer3.1.conv1.",
    "layer3.1.bn1.",
    "layer3.1.conv2.",
    "layer3.1.bn2.",
    "layer3.1.conv3.",
)


def is_keras_frozen(name: str) -> bool:
    """Whether the torchvision ResNet50 parameter/module ``name`` is in Keras's first 100 layers."""
    return any(name.startswith(p) or name + "." == p for p in RESNET50_FROZEN_PREFIXES)


class ResNet50Recipe(nn.Module):
    """The original recipe: ResNet50 (first 100 Keras layers frozen) -> GAP -> Dense(1024, ReLU)
    -> BatchNorm -> Dropout(0.3) -> Dense(1)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    views = 1

    def __init__(self, dropout: float = 0.3, weights: str = "imagenet"):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        load_resnet50_weights(net, weights)
        net.fc = nn.Identity()
        self.backbone = net
        self.num_features = 2048
        self.dense = nn.Linear(2048, 1024)
        self.bn = nn.BatchNorm1d(1024)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, 1)
        freeze_keras_first_100(self.backbone)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.bn(torch.relu(self.dense(pooled)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen batch norms run in inference mode, as in Keras.
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.BatchNorm2d) and is_keras_frozen(name):
                module.eval()
        return self

    def backbone_parameters(self):
        return (p for p in self.backbone.parameters() if p.requires_grad)

    def head_parameters(self):
        return [*self.dense.parameters(), *self.bn.parameters(), *self.fc.parameters()]


def freeze_keras_first_100(resnet: nn.Module) -> list[str]:
    """Freeze the parameters of Keras's first 100 ResNet50 layers; returns the frozen names."""
    frozen = []
    for name, param in resnet.named_parameters():
        if is_keras_frozen(name):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def load_resnet50_weights(net: nn.Module, weights: str) -> str:
    """``imagenet`` (torchvision's weights API, needs the internet or its cache), a state-dict
    file, or ``none`` (random: only to prove the pipeline; says so loudly)."""
    if weights == "none":
        log.warning(
            "ResNet50 WITHOUT pretrained weights (random init): fine to prove the pipeline, "
            "useless as a classifier. Pass --weights imagenet (online) or --weights FILE."
        )
        return "random"
    if weights == "imagenet":
        from torchvision.models import ResNet50_Weights

        try:
            state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
        except Exception as err:  # no network, no cache: tell the user what to do instead
            raise BusdxError(
                "cannot fetch torchvision's ResNet50 ImageNet weights (offline?): pass "
                "--weights PATH to a saved state dict, or --weights none for a random init"
            ) from err
        net.load_state_dict(state)
        return "imagenet (torchvision IMAGENET1K_V2)"
    path = Path(weights)
    if not path.is_file():
        raise BusdxError(f"weights file {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, _ = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise BusdxError(f"{path}: not a torchvision ResNet50 state dict (missing {missing[:3]})")
    return f"file {path.name}"


class ClassifierEnsemble(_PooledLinear):
    """Several EfficientNet-Lite classifiers as one model: their feature maps side by side and
    one linear head holding each member's weights divided by their number. The logit is then
    exactly the members' mean logit, and the CAM identity of :class:`ExportWrapper` still holds.

    Members may mix one and two views. The ensemble then takes two views (crop, whole image) and
    a single-view member sees the crop only, view 0 of the contract: so it must be a crop
    network, never a whole-image one. Its pass over the crop is the only one it makes; in the
    whole-image slot its features are zeros that the head gives no weight, so a two-view
    network plus a crop network costs three backbone passes, not four.
    """

    mean = LITE_MEAN
    std = LITE_STD

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members or any(not isinstance(m, LiteClassifier) for m in members):
            raise BusdxError("an ensemble takes EfficientNet-Lite classifiers only")
        self.views = max(m.views for m in members)
        self.members = nn.ModuleList(m.eval() for m in members)
        self.num_features = sum(m.num_features for m in members)
        self.dropout = nn.Identity()  # inference only: the members were trained with theirs
        self.fc = nn.Linear(self.views * self.num_features, 1)
        with torch.no_grad():
            # pooled layout per sample: view 0 of every member, then view 1 of every member
            blocks = []
            for v in range(self.views):
                for m in members:
                    c = m.num_features
                    if m.views == self.views:
                        blocks.append(m.fc.weight[:, v * c:(v + 1) * c])
                    else:
                        blocks.append(m.fc.weight if v == 0 else torch.zeros_like(m.fc.weight))
            self.fc.weight.copy_(torch.cat(blocks, dim=1) / len(members))
            self.fc.bias.copy_(torch.stack([m.fc.bias for m in members]).mean(dim=0))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        maps = []
        for m in self.members:
            if m.views == self.views:
                maps.append(m.feature_map(x))
                continue
            crops = x.reshape(-1, self.views, *x.shape[1:])[:, 0]
            f = m.feature_map(crops)  # [N, C, h, w]
            blank = torch.zeros_like(f)
            maps.append(torch.stack([f, blank], dim=1).reshape(-1, *f.shape[1:]))
        return torch.cat(maps, dim=1)


def conv_bn_pairs(backbone: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Each convolution of an EfficientNet-Lite backbone with the batch norm that follows it
    (in timm's module order every convolution is directly followed by its batch norm)."""
    modules = [m for m in backbone.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    pairs = list(zip(modules[::2], modules[1::2], strict=False))
    if len(modules) % 2 or any(not isinstance(c, nn.Conv2d) or not isinstance(b, nn.BatchNorm2d)
                               for c, b in pairs):
        raise BusdxError("the backbone's convolutions and batch norms do not alternate")
    return pairs


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold each batch norm of ``model``'s backbone into its convolution, in place, the way the
    exporter does: the convolution takes the scale, the batch norm keeps only the shifted bias
    (mean 0, variance 1 - eps, scale 1). The network computes the same in eval mode, and every
    classifier folded this way -- a rebuilt one (``export classification --recover``) included
    -- holds its weights in the same form, so weights of different runs can be averaged."""
    for conv, bn in conv_bn_pairs(model.backbone):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bn.bias.sub_(bn.running_mean * scale)
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    return model


def build_classifier(spec: ClassifierSpec, pretrained: bool = True) -> nn.Module:
    """The model for ``spec``; ``pretrained=False`` skips loading weights (a checkpoint follows)."""
    if spec.arch in LITE_ARCHS:
        return LiteClassifier(dropout=spec.dropout, pretrained=pretrained and spec.weights != "none",
                              variant=spec.arch, views=spec.views)
    if spec.views != 1:
        raise BusdxError("two views (crop and whole image) are for EfficientNet-Lite backbones")
    if spec.arch == "resnet50":
        return ResNet50Recipe(dropout=spec.dropout, weights=spec.weights if pretrained else "none")
    raise BusdxError(f"unknown classifier architecture {spec.arch!r}; choose one of {ARCHS}")


def normalise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N,V,S,S] gray in [0,1] -> the backbone's 3-channel normalised input [N*V,3,S,S] (the
    views of one sample consecutive), for training and for the exported graph alike. Plain
    floats per channel: a tensor made here would be a constant the ONNX tracer warns about."""
    size = x.shape[-1]
    gray = x.reshape(-1, 1, size, size)
    return torch.cat([(gray - m) / s for m, s in zip(model.mean, model.std, strict=True)], dim=1)


class ExportWrapper(nn.Module):
    """The ONNX graph: ``image`` [N,V,S,S] in [0,1] -> ``logit`` [N,1], ``cam`` [N,1,h,w].

    V is the model's number of views: 1 (a crop or the whole image), or 2 (channel 0 the lesion
    crop, channel 1 the whole letterboxed image). With two views the CAM is the crop's map plus
    the whole image's mean contribution (a constant), so the identity below still holds and the
    heatmap shows where in the crop the evidence lies.

    Normalisation (gray -> 3 channels, (x - mean) / std) happens inside. The CAM is each
    position's contribution to the logit through the head's linear direction ``w``:
    ``cam[p] = w . f[p]``, so ``mean(cam) + b = w . mean(f) + b = logit``.

    For lite0 ``w`` is the final linear layer's weight and ``b`` its bias. For the ResNet50
    recipe the head (Dense, ReLU, BatchNorm, Dense) is piecewise linear in the pooled features:
    at the image's own ReLU pattern D, ``logit = (W2 diag(a) D W1) g + c`` with ``a`` the batch
    norm's scale, so ``w = W2 diag(a) D W1`` is computed in the graph per image; it equals the
    gradient of the logit with respect to the pooled features, i.e. this CAM is Grad-CAM before
    its ReLU (times h*w), and ``mean(cam) + c == logit`` still holds with an image-dependent
    ``c``.
    """

    def __init__(self, model: nn.Module, tta: str = "none"):
        super().__init__()
        if tta not in TTA_MODES:
            raise BusdxError(f"unknown test-time augmentation {tta!r}; choose from {TTA_MODES}")
        if tta == "flip_crop" and (getattr(model, "views", 1) != 2
                                   or isinstance(model, ClassifierEnsemble)):
            raise BusdxError("flip_crop mirrors the crop of a single two-view classifier only")
        self.model = model.eval()
        # Test-time augmentation: average the image and its left-right mirror (a breast lesion
        # has no handedness). Logits and mirrored-back CAMs are averaged, so mean(cam) + bias
        # is still the logit. "flip" mirrors every view; "flip_crop" only a two-view model's
        # crop (three backbone passes instead of four: the whole image is seen once).
        self.tta = tta

    def direction(self, pooled: torch.Tensor) -> torch.Tensor:
        """[N, C] linear direction of the head at each image's pooled features."""
        m = self.model
        if isinstance(m, ResNet50Recipe):
            z = m.dense(pooled)
            gate = (z > 0).to(z.dtype)  # [N, 1024]
            scale = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)  # [1024]
            return (m.fc.weight * scale * gate) @ m.dense.weight  # [N, 2048]
        return m.fc.weight.expand(pooled.shape[0], -1)

    def single(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.model.views
        fmap = self.model.feature_map(x)  # [N * V, C, h, w]
        c, h, w_ = fmap.shape[1:]
        fmap = fmap.reshape(-1, views, c, h, w_)
        pooled = fmap.mean(dim=(3, 4)).reshape(-1, views * c)
        logit = self.model.head(pooled)
        w = self.direction(pooled).reshape(-1, views, c)
        cams = torch.einsum("nvc,nvchw->nvhw", w, fmap)
        cam = cams[:, :1]
        if views > 1:
            cam = cam + cams[:, 1:].mean(dim=(2, 3)).sum(dim=1).view(-1, 1, 1, 1)
        return logit, cam

    def forward(self, image: torch.Tensor):
        x = normalise(self.model, image)
        if self.tta == "none":
            return self.single(x)
        n = image.shape[0]
        if self.tta == "flip_crop":
            return self.crop_mirrored(x, n)
        logit, cam = self.single(torch.cat([x, torch.flip(x, dims=[3])], dim=0))
        return (logit[:n] + logit[n:]) / 2, (cam[:n] + torch.flip(cam[n:], dims=[3])) / 2

    def crop_mirrored(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views, the crop averaged with its mirror. The head is linear in the pooled
        features, so this equals the mean logit of (crop, whole) and (mirrored crop, whole)."""
        size = x.shape[-1]
        views = x.reshape(n, 2, 3, size, size)
        crop, whole = views[:, 0], views[:, 1]
        fmap = self.model.feature_map(torch.cat([crop, torch.flip(crop, dims=[3]), whole]))
        f_crop = (fmap[:n] + torch.flip(fmap[n : 2 * n], dims=[3])) / 2  # mirrored back
        p_whole = fmap[2 * n :].mean(dim=(2, 3))
        pooled = torch.cat([f_crop.mean(dim=(2, 3)), p_whole], dim=1)
        logit = self.model.head(pooled)
        w = self.direction(pooled).reshape(n, 2, -1)
        cam = torch.einsum("nc,nchw->nhw", w[:, 0], f_crop).unsqueeze(1)
        return logit, cam + (w[:, 1] * p_whole).sum(dim=1).view(-1, 1, 1, 1)


def export_module(model: nn.Module, tta: str = "none", logit_offset: float = 0.0
                  ) -> ExportWrapper:
    """The torch module that export_onnx traces: the same computation in eager mode (the
    benchmarks time it against the ONNX graph)."""
    import copy

    if logit_offset:
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.fc.bias += logit_offset
    return ExportWrapper(model, tta=tta).eval()


def export_onnx(model: nn.Module, path: str | Path, size: int = 224, tta: str = "none",
                logit_offset: float = 0.0, storage: str = "float32") -> Path:
    """Write ``model`` as ONNX with the contract's names and a dynamic batch axis.

    ``storage="float16"`` keeps the weights as float16 in the file (see busdx.models.storage).

    ``logit_offset`` is added to the final bias (so to the logit, and the CAM identity keeps
    holding): it carries Platt scaling's intercept, leaving only a temperature to apply.
    """
    from busdx.models.contract import CLASSIFIER_OUTPUTS, INPUT_NAME

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = export_module(model, tta=tta, logit_offset=logit_offset)
    dummy = torch.rand(1, getattr(model, "views", 1), size, size)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=list(CLASSIFIER_OUTPUTS),
            dynamic_axes={INPUT_NAME: {0: "n"}, "logit": {0: "n"}, "cam": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    _inline_external_data(tmp, path)
    return store_weights(path, storage)


def _inline_external_data(src: Path, dst: Path) -> None:
    """Save as one self-contained file (some exporters write weights beside the graph)."""
    import onnx

    proto = onnx.load(str(src), load_external_data=True)
    onnx.save_model(proto, str(dst), save_as_external_data=False)
    for f in src.parent.glob(src.name + "*"):
        f.unlink()
    data = src.with_suffix(".onnx.data")
    if data.exists():
        data.unlink()
