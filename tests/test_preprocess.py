import io

import numpy as np
import pytest
from PIL import Image

from busdx.data.preprocess import (
    ImageError,
    Letterbox,
    load_gray,
    load_mask,
    pil_to_array,
    prepare,
    prepare_pair,
    to_gray_float,
)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_real_image_and_mask_stay_aligned_and_map_back(fixtures_root):
    image = load_gray(fixtures_root / "Images" / "bus_0009-l.png")
    mask = load_mask(fixtures_root / "Masks" / "mask_0009-l.png")
    x, m, box = prepare_pair(image, mask)
    assert x.shape == m.shape == (224, 224) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # The mask's centroid lands where the image geometry says it should.
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    my, mx = np.nonzero(m)
    assert np.allclose(box.to_original(my.mean(), mx.mean()), (cy, cx), atol=1.5)
    back = box.invert(m, nearest=True)
    assert back.shape == mask.shape
    assert _dice(back > 0, mask > 0) > 0.97


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (224, 224), (479, 580)])
def test_letterbox_keeps_aspect_and_inverts(shape):
    box = Letterbox(*shape, size=224)
    h, w = box.inner
    assert max(h, w) == 224
    assert abs(h / w - shape[0] / shape[1]) < 0.02
    ramp = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    out = box.apply(ramp)
    top, left = box.offset
    assert out[:top].sum() == 0 and out[:, :left].sum() == 0  # black padding
    assert np.abs(box.invert(out) - ramp).max() < 0.02


def test_bit_depths_and_colour_modes_give_the_same_picture(fixtures_root):
    ref = load_gray(fixtures_root / "Images" / "bus_0358-l.png")
    u8 = np.round(ref * 255).astype(np.uint8)
    u16 = u8.astype(np.uint16) * 257  # full 16-bit range
    u12 = (u8.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    rgb = np.stack([u8] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full(u8.shape + (1,), 255, np.uint8)], axis=-1)
    for variant in (u8, u16, u12, rgb, rgba):
        assert np.abs(to_gray_float(variant) - ref).max() < 0.01


def test_16_bit_png_round_trip(tmp_path):
    data = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(data).save(path)
    with Image.open(path) as img:
        arr = pil_to_array(img)
    assert arr.dtype == np.uint16 and arr.max() == data.max()
    gray = load_gray(path)
    assert gray.max() == pytest.approx(data.max() / 65535, abs=1e-3)


def test_alpha_is_composited_on_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :16, 3] = 255
    gray = to_gray_float(rgba)
    assert gray[:, :16].min() > 0.99 and gray[:, 16:].max() == 0


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((32, 32, 2)), np.zeros((2, 32, 32, 3))])
def test_unsupported_shapes_are_clear_errors(bad):
    with pytest.raises(ImageError):
        to_gray_float(bad)


def test_truncated_file_is_an_image_error(fixtures_root, tmp_path):
    data = (fixtures_root / "Images" / "bus_0009-l.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_gray(path)
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageError):
        load_gray(path)


def test_prepare_is_deterministic():
    img = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    a, _ = prepare(img)
    b, _ = prepare(img)
    assert np.array_equal(a, b)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
