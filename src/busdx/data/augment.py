"""Seeded augmentations that act on an image and its mask together.

The original recipe's rotations, flips and brightness/contrast, plus changes that ultrasound
images really show between machines and operators: multiplicative speckle-like noise, gamma
(the scanner's gain curve), blur (focus and resolution), down-sampling (a lower-resolution
scanner or export), scale and elastic deformation (probe pressure). All geometric changes are
composed into one sampling grid and applied in a single resample, so the mask never drifts from
the image. Only numpy is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 15.0
    p_rotate: float = 0.7
    p_hflip: float = 0.5
    p_vflip: float = 0.0  # the skin is at the top of every ultrasound image: off by default
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.06  # fraction of the side
    p_affine: float = 0.7
    p_elastic: float = 0.25
    elastic_alpha: float = 6.0  # pixels of displacement
    elastic_grid: int = 6
    brightness: float = 0.12
    contrast: tuple[float, float] = (0.8, 1.25)
    p_intensity: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.5
    speckle_sigma: tuple[float, float] = (0.03, 0.15)
    p_speckle: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.3)
    p_blur: float = 0.2
    downscale: tuple[float, float] = (0.33, 0.75)  # fraction of the side kept
    p_downscale: float = 0.0

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """``default``: the settings every bundled network so far trained with. ``strong``:
        gain, contrast, blur, speckle and resolution changes wide enough to span what the
        robustness study (studies/robustness.py) applies, where ``default`` stops short of it
        (a classifier's calls moved under gain and blur while its outline barely did)."""
        if name == "default":
            return cls()
        if name == "strong":
            return cls(brightness=0.2, contrast=(0.6, 1.5), p_intensity=0.85,
                       gamma=(0.55, 1.8), p_gamma=0.6, speckle_sigma=(0.03, 0.3), p_speckle=0.35,
                       blur_sigma=(0.4, 2.5), p_blur=0.35, p_downscale=0.25)
        raise ValueError(f"unknown augmentation preset {name!r}; choose from {AUGMENT_PRESETS}")


AUGMENT_PRESETS = ("default", "strong")


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    padded = np.pad(image, r, mode="reflect")
    rows = sum(k[i] * padded[:, i : i + image.shape[1]] for i in range(len(k)))
    return sum(k[i] * rows[i : i + image.shape[0], :] for i in range(len(k))).astype(np.float32)


def remap(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, nearest: bool) -> np.ndarray:
    """Sample ``image`` at float coordinates; outside the image is 0 (background)."""
    h, w = image.shape
    if nearest:
        yi, xi = np.rint(ys).astype(int), np.rint(xs).astype(int)
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        out = np.zeros(ys.shape, dtype=image.dtype)
        out[inside] = image[yi[inside], xi[inside]]
        return out
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
    padded = np.pad(image, 1)
    out = np.zeros(ys.shape, dtype=np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy = np.clip(y0 + dy + 1, 0, h + 1)
            xx = np.clip(x0 + dx + 1, 0, w + 1)
            out += wy * wx * padded[yy, xx]
    return out


class Augmenter:
    """``Augmenter(config)(image, mask, rng)`` -> (image, mask), both the input's shape."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def _grid(self, h: int, w: int, rng: np.random.Generator):
        c = self.config
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        # Inverse mapping: for each output pixel, where to sample in the input.
        u, v = xs - cx, ys - cy
        if rng.random() < c.p_hflip:
            u = -u
        if rng.random() < c.p_vflip:
            v = -v
        angle = np.deg2rad(rng.uniform(-c.rotate_deg, c.rotate_deg)) if rng.random() < c.p_rotate else 0.0
        scale, ty, tx = 1.0, 0.0, 0.0
        if rng.random() < c.p_affine:
            scale = rng.uniform(*c.scale)
            ty, tx = rng.uniform(-c.translate, c.translate, size=2) * (h, w)
        cos, sin = np.cos(angle), np.sin(angle)
        src_x = (cos * u + sin * v) / scale + cx - tx
        src_y = (-sin * u + cos * v) / scale + cy - ty
        if rng.random() < c.p_elastic:
            g = c.elastic_grid
            coarse = rng.normal(0.0, c.elastic_alpha, size=(2, g, g)).astype(np.float32)
            dy, dx = (_upsample(coarse[i], h, w) for i in range(2))
            src_y, src_x = src_y + dy, src_x + dx
        return src_y, src_x

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
        c = self.config
        ys, xs = self._grid(*image.shape, rng)
        out = remap(image, ys, xs, nearest=False)
        out_mask = remap(mask, ys, xs, nearest=True) if mask is not None else None
        if rng.random() < c.p_intensity:
            mean = float(out.mean())
            out = (out - mean) * rng.uniform(*c.contrast) + mean + rng.uniform(-c.brightness, c.brightness)
        if rng.random() < c.p_gamma:
            out = np.clip(out, 0.0, 1.0) ** rng.uniform(*c.gamma)
        if rng.random() < c.p_speckle:
            sigma = rng.uniform(*c.speckle_sigma)
            out = out * (1.0 + sigma * rng.standard_normal(out.shape).astype(np.float32))
        if rng.random() < c.p_blur:
            out = gaussian_blur(out, rng.uniform(*c.blur_sigma))
        if rng.random() < c.p_downscale:
            out = downscale(out, rng.uniform(*c.downscale))
        return np.clip(out, 0.0, 1.0).astype(np.float32), out_mask


def downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Down-sampled to ``factor`` of each side (anti-aliased) and interpolated back."""
    h, w = image.shape
    sh, sw = max(2, round(h * factor)), max(2, round(w * factor))
    smooth = gaussian_blur(image, 0.5 / factor)
    ys, xs = np.meshgrid(np.linspace(0, h - 1, sh, dtype=np.float32),
                         np.linspace(0, w - 1, sw, dtype=np.float32), indexing="ij")
    return _upsample(remap(smooth, ys, xs, nearest=False), h, w)


def _upsample(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smoothly interpolate a coarse grid of displacements to h x w."""
    gy = np.linspace(0, coarse.shape[0] - 1, h, dtype=np.float32)
    gx = np.linspace(0, coarse.shape[1] - 1, w, dtype=np.float32)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    return remap(coarse, yy, xx, nearest=False)
