"""The offline ImageNet EfficientNet-Lite0 weights really load: into timm's classifier (which then
recognises photographs) and into the segmentation U-Net's encoder (tensor for tensor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from busdx.models.pretrained import LITE_MEAN, LITE_STD, lite_state_dict, load_lite_weights  # noqa: E402
from busdx.models.segmentation import SegmenterConfig, build_segmenter  # noqa: E402

DAISY = 985
# ImageNet classes that fit scikit-learn's china.jpg (a temple roof over a lake, trees).
CHINA_PLAUSIBLE = {442, 449, 483, 497, 498, 538, 580, 668, 698, 832, 975}  # bell cote, boathouse,
# castle, church, cinema, dome, greenhouse, mosque, palace, stupa, lakeside


def _photo(name: str) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray(sklearn_datasets.load_sample_image(name))
    image = image.resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _top5(model: torch.nn.Module, name: str) -> list[int]:
    with torch.no_grad():
        return model.eval()(_photo(name))[0].topk(5).indices.tolist()


@pytest.fixture(scope="module")
def imagenet_model():
    torch.set_num_threads(1)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_lite_weights(model, "tf_efficientnet_lite0")
    return model


def test_loaded_classifier_recognises_photos(imagenet_model):
    flower = _top5(imagenet_model, "flower.jpg")
    china = _top5(imagenet_model, "china.jpg")
    assert flower[0] == DAISY, flower
    assert len(set(china) & CHINA_PLAUSIBLE) >= 2, china


def test_random_weights_do_not_recognise_photos():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert _top5(model, "flower.jpg")[0] != DAISY


def test_unet_encoder_holds_the_imagenet_tensors():
    torch.manual_seed(0)
    unet = build_segmenter(SegmenterConfig(pretrained=True))
    encoder = unet.encoder.model.state_dict()
    weights = lite_state_dict("tf_efficientnet_lite0")
    shared = [k for k in encoder if k in weights]
    # Every encoder tensor comes from the file (the features-only model has no classifier).
    assert len(shared) == len(encoder) > 100
    for key in shared:
        assert torch.equal(encoder[key], weights[key]), key


def test_unpretrained_unet_encoder_differs_from_the_file():
    torch.manual_seed(0)
    unet = build_segmenter(SegmenterConfig(pretrained=False))
    encoder = unet.encoder.model.state_dict()
    weights = lite_state_dict("tf_efficientnet_lite0")
    assert not torch.equal(encoder["conv_stem.weight"], weights["conv_stem.weight"])
