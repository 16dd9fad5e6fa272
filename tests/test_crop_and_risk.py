import numpy as np
import pytest

from busdx.data.crop import CropConfig, crop_box, lesion_crop, mask_bbox
from busdx.inference.risk import RISK_BANDS, risk_band


def test_crop_centres_the_lesion_with_context():
    image = np.zeros((200, 300), np.float32)
    mask = np.zeros((200, 300), np.uint8)
    mask[80:120, 100:180] = 1
    image[mask > 0] = 1.0
    assert mask_bbox(mask) == (80, 100, 120, 180)
    crop, box = lesion_crop(image, mask, CropConfig(size=64, context=0.25))
    assert crop.shape == (64, 64)
    assert box.side == 120  # 80 px long side + 2 x 25%
    # the lesion is in the middle of the crop
    ys, xs = np.nonzero(crop > 0.5)
    assert abs(ys.mean() - 31.5) < 2 and abs(xs.mean() - 31.5) < 2


def test_crop_past_the_border_is_black_and_paste_inverts():
    image = np.ones((100, 100), np.float32)
    mask = np.zeros((100, 100), np.uint8)
    mask[0:20, 0:20] = 1
    crop, box = lesion_crop(image, mask, CropConfig(size=40, context=0.5))
    assert box.top < 0 and box.left < 0
    assert crop[0, 0] == 0 and crop[-1, -1] == 1
    pasted = box.paste(np.ones((7, 7), np.float32), 100, 100)
    assert pasted[5, 5] == 1 and pasted[90, 90] == 0


def test_empty_mask_uses_the_whole_image():
    image = np.random.default_rng(0).random((120, 90)).astype(np.float32)
    crop, box = lesion_crop(image, np.zeros_like(image, dtype=np.uint8))
    assert box is None and crop.shape == (224, 224)


def test_jitter_is_seeded_and_bounded():
    mask = np.zeros((200, 200), np.uint8)
    mask[90:110, 90:110] = 1
    a = crop_box(mask, rng=np.random.default_rng(1), jitter=0.15)
    b = crop_box(mask, rng=np.random.default_rng(1), jitter=0.15)
    assert a == b
    plain = crop_box(mask)
    assert 0.8 < a.side / plain.side < 1.2


@pytest.mark.parametrize(
    "p, band",
    [(0.0, "3"), (0.02, "3"), (0.021, "4A"), (0.0999, "4A"), (0.1, "4B"), (0.5, "4C"),
     (0.9499, "4C"), (0.95, "5"), (1.0, "5")],
)
def test_risk_band_edges(p, band):
    assert risk_band(p).name == band


def test_risk_bands_cover_the_unit_interval():
    assert RISK_BANDS[0].low == 0 and RISK_BANDS[-1].high == 1
    for a, b in zip(RISK_BANDS, RISK_BANDS[1:], strict=False):
        assert a.high == b.low
    with pytest.raises(ValueError):
        risk_band(1.5)
