"""Seeded augmentations that act on an image and its mask together.

The original recipe's rotations, flips and brightness/contrast, plus changes that ultrasound
images really show between machines and operators: multiplicative speckle-like noise, gamma
(the scanner's gain curve), blur (focus and resolution), down-sampling (a lower-resolution
scanner or export), scale and elastic deformation (probe pressure).

The transforms are torchvision's (``transforms.v2``): image and mask go through each geometric
transform together as ``tv_tensors``, so the mask is resampled by nearest neighbour on the same
geometry and never drifts from the image. Every random draw comes from the numpy generator the
caller passes, seeded per image, so an augmented batch depends neither on torch's global seed
nor on how many workers prepare it. torch is imported when an image is first augmented, so
that the command line can offer the presets without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
    # zoom out: the whole image shrunk to this fraction of the side and placed anywhere in the
    # frame, so that a lesion-centred crop looks like a wider field of view, as whole scans from
    # other scanners and hospitals do (BUS-BRA's images are cut close to the lesion)
    zoom_out: tuple[float, float] = (0.45, 0.85)
    p_zoom_out: float = 0.0

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """``default``: the settings every bundled network so far trained with. ``strong``:
        gain, contrast, blur, speckle and resolution changes wide enough to span what the
        robustness study (studies/robustness.py) applies, where ``default`` stops short of it
        (a classifier's calls moved under gain and blur while its outline barely did).
        ``wide``: ``default`` plus zooming out half of the time, for scans with a wider field of
        view than the training images'."""
        if name == "default":
            return cls()
        if name == "strong":
            return cls(brightness=0.2, contrast=(0.6, 1.5), p_intensity=0.85,
                       gamma=(0.55, 1.8), p_gamma=0.6, speckle_sigma=(0.03, 0.3), p_speckle=0.35,
                       blur_sigma=(0.4, 2.5), p_blur=0.35, p_downscale=0.25)
        if name == "wide":
            return cls(p_zoom_out=0.5)
        raise ValueError(f"unknown augmentation preset {name!r}; choose from {AUGMENT_PRESETS}")


AUGMENT_PRESETS = ("default", "strong", "wide")


class Augmenter:
    """``Augmenter(config)(image, mask, rng)`` -> (image, mask), both the input's shape: a float32
    image in [0, 1] and a uint8 mask (or None)."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def _geometry(self, pair: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        bilinear = InterpolationMode.BILINEAR
        c = self.config
        h, w = pair[0].shape[-2:]
        # the draws keep their order whatever is applied, so presets that differ only in
        # intensity share their geometry seed by seed
        hflip, vflip = rng.random() < c.p_hflip, rng.random() < c.p_vflip
        angle = float(rng.uniform(-c.rotate_deg, c.rotate_deg)) if rng.random() < c.p_rotate else 0.0
        scale, shift = 1.0, [0.0, 0.0]
        if rng.random() < c.p_affine:
            scale = float(rng.uniform(*c.scale))
            ty, tx = rng.uniform(-c.translate, c.translate, size=2) * (h, w)
            shift = [float(tx), float(ty)]
        elastic = None
        if rng.random() < c.p_elastic:
            g = c.elastic_grid
            coarse = torch.from_numpy(rng.normal(0.0, c.elastic_alpha, size=(1, 2, g, g)))
            # pixels -> grid_sample's [-1, 1] units, as (x, y) per pixel
            smooth = torch.nn.functional.interpolate(coarse.float(), size=(h, w), mode="bicubic",
                                                     align_corners=True)
            elastic = (smooth[0] * torch.tensor([2.0 / h, 2.0 / w])[:, None, None]
                       ).flip(0).permute(1, 2, 0)[None]
        # drawn only when enabled, so the presets without it keep their draws seed by seed
        if c.p_zoom_out > 0 and rng.random() < c.p_zoom_out:
            zoom = float(rng.uniform(*c.zoom_out))
            room = (1.0 - zoom * scale) / 2  # how far the shrunk image can move and stay whole
            ty, tx = rng.uniform(-1.0, 1.0, size=2) * max(room, 0.0) * (h, w)
            scale, shift = scale * zoom, [shift[0] * zoom + float(tx), shift[1] * zoom + float(ty)]
        if hflip:
            pair = [F.horizontal_flip(t) for t in pair]
        if vflip:
            pair = [F.vertical_flip(t) for t in pair]
        if angle or scale != 1.0 or any(shift):
            pair = [F.affine(t, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0],
                             interpolation=bilinear) for t in pair]
        if elastic is not None:
            pair = [F.elastic(t, elastic, interpolation=bilinear) for t in pair]
        return pair

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
        import torch
        from torchvision import tv_tensors
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        c = self.config
        pair = [tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.float32))[None])]
        if mask is not None:
            pair.append(tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8))[None]))
        pair = self._geometry(pair, rng)
        out = pair[0].clamp(0.0, 1.0)
        if rng.random() < c.p_intensity:
            out = F.adjust_contrast(out, float(rng.uniform(*c.contrast)))
            out = out + float(rng.uniform(-c.brightness, c.brightness))  # additive: the gain offset
        if rng.random() < c.p_gamma:
            out = F.adjust_gamma(out.clamp(0.0, 1.0), float(rng.uniform(*c.gamma)))
        if rng.random() < c.p_speckle:
            sigma = rng.uniform(*c.speckle_sigma)
            noise = torch.from_numpy(rng.standard_normal(out.shape[-2:], dtype=np.float32))
            out = out * (1.0 + float(sigma) * noise)  # multiplicative, as speckle is
        if rng.random() < c.p_blur:
            sigma = float(rng.uniform(*c.blur_sigma))
            side = 2 * max(1, round(3 * sigma)) + 1
            out = F.gaussian_blur(out, [side, side], [sigma, sigma])
        if rng.random() < c.p_downscale:
            h, w = out.shape[-2:]
            factor = rng.uniform(*c.downscale)
            small = F.resize(out, [max(2, round(h * factor)), max(2, round(w * factor))],
                             antialias=True)
            out = F.resize(small, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=False)
        image_out = out.clamp(0.0, 1.0)[0].numpy().astype(np.float32)
        return image_out, (pair[1][0].numpy() if mask is not None else None)
