"""Write tests/fixtures/not-ultrasound/: pictures that are not breast ultrasound, which the
product must refuse or warn about. Photographs, textures, microscopy and a fundus photograph
from scikit-image's bundled data (each CC0 or public domain), CT and MR slices from pydicom's
test files (NEMA WG04 sample images), and charts and a page drawn here. Run it once; the
folder is committed, so neither package is needed afterwards.

    python tools/make_not_ultrasound.py   (needs scikit-image and pydicom)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "not-ultrasound"
LONG_SIDE = 256
# scikit-image data files whose docstrings state CC0 or public domain
SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
           "coins.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
           "microaneurysms.png", "retina.jpg", "rocket.jpg", "text.png", "clock_motion.png")


def _shrunk(image: Image.Image) -> Image.Image:
    scale = LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.LANCZOS)
    return image.convert("RGB") if image.mode not in ("L", "RGB") else image


def _drawn() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    bars = Image.new("RGB", (320, 240), "white")
    d = ImageDraw.Draw(bars)
    d.line([(30, 210), (300, 210)], fill="black", width=2)
    d.line([(30, 20), (30, 210)], fill="black", width=2)
    for i, v in enumerate(rng.integers(40, 180, 6)):
        d.rectangle([45 + i * 42, 210 - int(v), 75 + i * 42, 210], fill=(40, 40, 40))
    line = Image.new("L", (320, 240), 255)
    d = ImageDraw.Draw(line)
    ys = 120 + np.cumsum(rng.normal(0, 8, 28))
    d.line([(20 + 10 * i, float(y)) for i, y in enumerate(ys)], fill=0, width=2)
    for y in range(30, 230, 40):
        d.line([(20, y), (300, y)], fill=200)
    page = Image.new("L", (240, 320), 250)
    d = ImageDraw.Draw(page)
    for row in range(14):
        words = rng.integers(3, 9, 6)
        x = 20
        for w in words:
            d.rectangle([x, 24 + row * 20, x + 6 * int(w), 32 + row * 20], fill=30)
            x += 6 * int(w) + 8
            if x > 200:
                break
    return {"drawn_bar_chart.png": bars, "drawn_line_chart.png": line,
            "drawn_text_page.png": page}


def main() -> None:
    import pydicom
    import skimage

    OUT.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.data.__file__).parent
    for name in SKIMAGE:
        with Image.open(data / name) as image:
            _shrunk(image).save(OUT / f"skimage_{Path(name).stem}.png")
    tests = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(tests / name, OUT / f"pydicom_{name}")
    for name, image in _drawn().items():
        image.save(OUT / name)


if __name__ == "__main__":
    main()
