import numpy as np
import pytest

from busdx.data.augment import AugmentConfig, Augmenter
from busdx.data.preprocess import load_gray, load_mask, prepare_pair


def _pair(fixtures_root):
    image = load_gray(fixtures_root / "Images" / "bus_0360-l.png")
    mask = load_mask(fixtures_root / "Masks" / "mask_0360-l.png")
    x, m, _ = prepare_pair(image, mask)
    return x, m


def test_seeded_augmentation_is_reproducible(fixtures_root):
    x, m = _pair(fixtures_root)
    aug = Augmenter()
    a = aug(x, m, np.random.default_rng(7))
    b = aug(x, m, np.random.default_rng(7))
    c = aug(x, m, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_geometry_moves_image_and_mask_together(fixtures_root):
    x, m = _pair(fixtures_root)
    # Geometry only: the pixels under the mask are the lesion's before and after.
    config = AugmentConfig(p_intensity=0, p_gamma=0, p_speckle=0, p_blur=0, p_rotate=1,
                           p_affine=1, p_elastic=1, p_hflip=0.5)
    aug = Augmenter(config)
    inside_before = x[m > 0].mean()
    for seed in range(10):
        xa, ma = aug(x, m, np.random.default_rng(seed))
        assert xa.shape == x.shape and ma.shape == m.shape
        assert set(np.unique(ma)) <= {0, 1}
        assert 0.6 < ma.sum() / m.sum() < 1.6
        assert abs(xa[ma > 0].mean() - inside_before) < 0.03


def test_horizontal_flip_alone_mirrors_both():
    x = np.zeros((32, 32), np.float32)
    x[:, :8] = 1
    m = (x > 0).astype(np.uint8)
    config = AugmentConfig(p_hflip=1, p_rotate=0, p_affine=0, p_elastic=0, p_intensity=0,
                           p_gamma=0, p_speckle=0, p_blur=0)
    xa, ma = Augmenter(config)(x, m, np.random.default_rng(0))
    assert np.allclose(xa, x[:, ::-1], atol=1e-5) and np.array_equal(ma, m[:, ::-1])


def test_output_stays_in_unit_range(fixtures_root):
    x, m = _pair(fixtures_root)
    aug = Augmenter(AugmentConfig(p_intensity=1, p_gamma=1, p_speckle=1, p_blur=1))
    for seed in range(5):
        xa, _ = aug(x, None, np.random.default_rng(seed))
        assert xa.dtype == np.float32 and xa.min() >= 0 and xa.max() <= 1


NOTHING = {"p_rotate": 0, "p_affine": 0, "p_elastic": 0, "p_hflip": 0, "p_intensity": 0,
           "p_gamma": 0, "p_speckle": 0, "p_blur": 0, "p_downscale": 0}


def _only(**kwargs) -> Augmenter:
    return Augmenter(AugmentConfig(**{**NOTHING, **kwargs}))


def test_nothing_drawn_leaves_the_pair_as_it_was(fixtures_root):
    x, m = _pair(fixtures_root)
    xa, ma = _only()(x, m, np.random.default_rng(0))
    assert np.array_equal(xa, x) and np.array_equal(ma, m)


def test_blur_preserves_mean():
    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    out, _ = _only(p_blur=1, blur_sigma=(1.0, 1.0))(img, None, np.random.default_rng(0))
    assert abs(out.mean() - img.mean()) < 0.01 and out.std() < img.std()


def test_downscale_loses_detail_but_keeps_shape_and_mean():
    img = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    down = _only(p_downscale=1, downscale=(0.4, 0.4))
    out, _ = down(img, None, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.float32
    assert abs(out.mean() - img.mean()) < 0.02
    # white noise has all its energy at fine scales: a lower resolution removes most of it
    assert out.std() < 0.5 * img.std()
    smooth = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (60, 1))
    assert np.abs(down(smooth, None, np.random.default_rng(0))[0] - smooth)[5:-5, 5:-5].max() < 0.02


def test_speckle_is_multiplicative():
    img = np.full((50, 50), 0.4, np.float32)
    img[:, :25] = 0.0
    out, _ = _only(p_speckle=1, speckle_sigma=(0.2, 0.2))(img, None, np.random.default_rng(0))
    assert (out[:, :25] == 0).all()  # black stays black
    assert 0.05 < out[:, 25:].std() / 0.4 < 0.3


def test_batches_do_not_depend_on_torch_seed(fixtures_root):
    import torch

    x, m = _pair(fixtures_root)
    aug = Augmenter(AugmentConfig.preset("strong"))
    torch.manual_seed(0)
    a = aug(x, m, np.random.default_rng(3))
    torch.manual_seed(1)
    b = aug(x, m, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_presets():
    assert AugmentConfig.preset("default") == AugmentConfig()
    strong = AugmentConfig.preset("strong")
    # every photometric range of the default lies inside the strong one's
    assert strong.brightness > AugmentConfig().brightness and strong.p_downscale > 0
    for name in ("contrast", "gamma", "blur_sigma", "speckle_sigma"):
        lo, hi = getattr(AugmentConfig(), name)
        slo, shi = getattr(strong, name)
        assert slo <= lo and shi >= hi, name
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        AugmentConfig.preset("extreme")


def test_strong_preset_changes_intensity_not_geometry(fixtures_root):
    x, m = _pair(fixtures_root)
    geometry_only = {"p_intensity": 0, "p_gamma": 0, "p_speckle": 0, "p_blur": 0,
                     "p_downscale": 0}
    base = Augmenter(AugmentConfig(**geometry_only))
    strong = Augmenter(AugmentConfig.preset("strong"))
    for seed in range(5):
        xs, ms = strong(x, m, np.random.default_rng(seed))
        _, mb = base(x, m, np.random.default_rng(seed))
        assert np.array_equal(ms, mb)  # the geometry draws come first and are the same
        assert xs.min() >= 0 and xs.max() <= 1


def test_zoom_out_shrinks_the_whole_field_and_keeps_it_in_the_frame():
    """The 'wide' preset's zoom-out makes a close crop look like a wider scan: image and mask
    shrink together by the drawn factor and stay whole inside the frame."""
    image = np.full((224, 224), 0.5, np.float32)
    mask = np.zeros((224, 224), np.uint8)
    mask[60:160, 70:150] = 1
    only_zoom = AugmentConfig(p_rotate=0, p_hflip=0, p_affine=0, p_elastic=0, p_intensity=0,
                              p_gamma=0, p_speckle=0, p_blur=0, p_zoom_out=1.0,
                              zoom_out=(0.5, 0.5))
    for seed in range(5):
        x, m = Augmenter(only_zoom)(image, mask, np.random.default_rng(seed))
        field = x > 0.25
        assert field.mean() == pytest.approx(0.25, abs=0.02)  # half the side: a quarter left
        assert m.sum() == pytest.approx(mask.sum() / 4, rel=0.05)
        rows, cols = np.nonzero(m)
        frows, fcols = np.nonzero(field)
        assert frows.min() <= rows.min() and rows.max() <= frows.max()
        assert fcols.min() <= cols.min() and cols.max() <= fcols.max()
    assert AugmentConfig.preset("wide").p_zoom_out > 0
    # presets without it draw as before: 'default' is unchanged seed by seed
    assert AugmentConfig.preset("default").p_zoom_out == 0
