"""Lesion segmentation networks and their ONNX wrapper.

Two architectures:
- ``lite_unet``: segmentation-models-pytorch's U-Net on timm's EfficientNet-Lite0 encoder, with
  the offline ImageNet weights loaded into the encoder (the bundled model);
- ``plain_unet``: the original recipe's plain U-Net (four down / four up double-conv blocks),
  randomly initialised, kept for comparison.

Both take 3-channel input normalised with mean/std 0.5. :class:`SegmenterExport` wraps either so
that the exported graph takes the contract's grayscale [N, 1, S, S] image in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from busdx.models.pretrained import LITE_MEAN, LITE_STD, load_lite_weights

ARCHITECTURES = ("lite_unet", "plain_unet")
LITE_ENCODER = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class SegmenterConfig:
    architecture: str = "lite_unet"
    encoder: str = LITE_ENCODER
    pretrained: bool = True
    # Narrow decoder: the encoder carries the capacity, and CPU time is the constraint.
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    plain_width: int = 32  # first-level channels of the plain U-Net

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegmenterConfig:
        d = dict(d)
        if "decoder_channels" in d:
            d["decoder_channels"] = tuple(d["decoder_channels"])
        return cls(**d)


def build_lite_unet(config: SegmenterConfig) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name=f"tu-{config.encoder}",
        encoder_weights=None,  # smp would download; the weights come from the offline package
        in_channels=3,
        classes=1,
        decoder_channels=config.decoder_channels,
    )
    if config.pretrained:
        load_lite_weights(model.encoder.model, config.encoder)
    return model


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainUNet(nn.Module):
    """The classic U-Net (Ronneberger et al.) with batch norm and same-padding."""

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 4):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.fuse.append(_double_conv(w * 2, w))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build_segmenter(config: SegmenterConfig | None = None) -> nn.Module:
    """The network that maps normalised 3-channel images to mask logits."""
    config = config or SegmenterConfig()
    if config.architecture == "lite_unet":
        return build_lite_unet(config)
    if config.architecture == "plain_unet":
        return PlainUNet(width=config.plain_width)
    raise ValueError(f"unknown architecture {config.architecture!r}; choose from {ARCHITECTURES}")


def normalise(gray: torch.Tensor) -> torch.Tensor:
    """[N, 1, S, S] in [0, 1] -> [N, 3, S, S] normalised as the encoder's weights expect."""
    mean = torch.tensor(LITE_MEAN, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    return (gray.repeat(1, 3, 1, 1) - mean) / std


class SegmenterExport(nn.Module):
    """The contract's segmenter: grayscale ``image`` [N, 1, S, S] -> ``mask_logits``."""

    def __init__(self, net: nn.Module, hflip_tta: bool = False):
        super().__init__()
        self.net = net
        # Test-time augmentation: average the logits of the image and its mirror (lesions have
        # no handedness), at twice the cost. Chosen on validation, recorded in the card.
        self.hflip_tta = hflip_tta
        # Buffers (not tensors built in forward) so the ONNX trace holds them as constants.
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.repeat(1, 3, 1, 1) - self.mean) / self.std
        logits = self.net(x)
        if self.hflip_tta:
            logits = 0.5 * (logits + torch.flip(self.net(torch.flip(x, dims=[3])), dims=[3]))
        return logits


def pooled_features(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mask logits and the encoder's feature maps averaged over space at each stage, concatenated
    (None for a network without a separate encoder): what the appearance check compares with
    the training images'. An ensemble's members' features are concatenated."""
    if isinstance(net, SegmenterEnsemble):
        parts = [pooled_features(member, x) for member in net.nets]
        logits = torch.stack([p[0] for p in parts]).mean(dim=0)
        if any(p[1] is None for p in parts):
            return logits, None
        return logits, torch.cat([p[1] for p in parts], dim=1)
    encoder = getattr(net, "encoder", None)
    if encoder is None:
        return net(x), None
    stages = encoder(x)
    logits = net.segmentation_head(net.decoder(stages))
    # stage 0 is the input itself
    return logits, torch.cat([f.mean(dim=(2, 3)) for f in stages[1:]], dim=1)


class SegmenterWithFeatures(SegmenterExport):
    """The contract's segmenter with a second output, ``features`` [N, D]."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.repeat(1, 3, 1, 1) - self.mean) / self.std
        logits, features = pooled_features(self.net, x)
        if self.hflip_tta:
            logits = 0.5 * (logits + torch.flip(self.net(torch.flip(x, dims=[3])), dims=[3]))
        return logits, features


def has_features(net: nn.Module) -> bool:
    """Whether :func:`pooled_features` gives features for ``net``: every network has an encoder."""
    nets = net.nets if isinstance(net, SegmenterEnsemble) else [net]
    return all(getattr(n, "encoder", None) is not None for n in nets)


class SegmenterEnsemble(nn.Module):
    """Several trained networks as one: their logits averaged, exported as one ONNX graph."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x) for net in self.nets]).mean(dim=0)


def load_segmenter_checkpoints(paths) -> tuple[nn.Module, list[dict]]:
    """One checkpoint's network, or the ensemble of several; and each checkpoint's metadata."""
    loaded = [load_segmenter_checkpoint(p) for p in paths]
    nets = [net for net, _ in loaded]
    net = nets[0] if len(nets) == 1 else SegmenterEnsemble(nets).eval()
    return net, [meta for _, meta in loaded]


def load_segmenter_checkpoint(path) -> tuple[nn.Module, dict]:
    """A trained network (in eval mode) and the checkpoint's metadata from ``best.pt``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = SegmenterConfig.from_dict(state["model_config"])
    # The trained weights replace the ImageNet ones: skip loading those.
    net = build_segmenter(SegmenterConfig.from_dict({**config.to_dict(), "pretrained": False}))
    net.load_state_dict(state["model"])
    net.eval()
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    return net, meta


def export_onnx(
    net: nn.Module, path, size: int = 224, opset: int = 17, hflip_tta: bool = False,
    features: bool = True,
) -> None:
    """Write the contract's segmenter: input ``image`` [N, 1, size, size], dynamic batch; with
    ``features`` (and a network that has an encoder) also the pooled encoder features."""
    from pathlib import Path

    from busdx.models.contract import FEATURES_OUTPUT, INPUT_NAME, SEGMENTER_OUTPUT

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = features and has_features(net)
    wrapper = (SegmenterWithFeatures if features else SegmenterExport)(net, hflip_tta).eval()
    outputs = [SEGMENTER_OUTPUT, FEATURES_OUTPUT] if features else [SEGMENTER_OUTPUT]
    dummy = torch.rand(2, 1, size, size)
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (dummy,), str(path), input_names=[INPUT_NAME],
            output_names=outputs, opset_version=opset,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            dynamo=False,
        )


def onnx_max_difference(
    net: nn.Module, path, images: torch.Tensor, hflip_tta: bool = False
) -> float:
    """Largest absolute difference of the logits between torch and ONNX Runtime on ``images``."""
    import onnxruntime as ort

    from busdx.models.contract import INPUT_NAME, SEGMENTER_OUTPUT

    with torch.no_grad():
        expected = SegmenterExport(net, hflip_tta).eval()(images).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([SEGMENTER_OUTPUT], {INPUT_NAME: images.numpy().astype("float32")})
    return float(abs(got - expected).max())
