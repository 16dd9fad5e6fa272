"""The scan area of an image: the image without the black margins a screen capture adds.

BUS-BRA's images are cut to the scan area, and the networks learned from them. A screen capture
or an export from another system often puts the scan in a black frame; the segmenter then sees
a smaller lesion and the two-view classifier a shrunken scan. On the validation images a black
frame lowers the AUC and, more, the sensitivity at the frozen threshold, and cutting it off first
gives the networks the image they were trained on (``studies/margins.py`` measures both;
``reports/studies/margins.json``).

A margin is a run of border rows (columns) in which fewer than ``FRACTION`` of the pixels are
above ``LEVEL``: black, give or take compression noise; runs thinner than ``MIN_FRAME`` of the
side are left alone. Text or a scale bar in the margin stops the cut there, so nothing that
might be tissue is removed. The bottom edge is special: deep in
the breast the echo fades, and some of BUS-BRA's scans end in rows as black as a margin.
The bottom is therefore cut only when another edge had a margin (the image is framed), and an
image cut to its scan area, as BUS-BRA's all are, is left exactly as it is (a test checks this on
the whole dataset). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busdx.inference.errors import InputError

# gray level at or below which a pixel is black (8-bit 4: compression noise on a black frame)
LEVEL = 4 / 255
# a border row or column is margin when fewer than this fraction of its pixels are brighter
FRACTION = 0.02
# a margin thinner than this share of its side is left alone: a screen's frame is wider, and a
# dark border row or two is as likely the scan's own (a darkened image's faint top rows)
MIN_FRAME = 0.02
# a scan area smaller than this share of the image's side is not believed: the image is
# mostly black, and is analysed whole
MIN_SHARE = 0.2
# a dual-view capture's gap between its panes is looked for in this band of its scan area's width
GAP_BAND = (0.3, 0.7)
PANES = ("left", "right")


class NoDualView(InputError):
    """A capture given as dual-view in which no gap between two panes can be found."""


TOO_NARROW = ("one side of the gap is too narrow to be a pane: it does not look like a dual-view "
              "capture (give the two views as two files)")


@dataclass(frozen=True)
class ScanArea:
    """Rows ``top:bottom`` and columns ``left:right`` of the image."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def is_whole(self, shape: tuple[int, int]) -> bool:
        return (self.top, self.left, self.bottom, self.right) == (0, 0, *shape)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.top:self.bottom, self.left:self.right]

    def paste(self, part: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``part`` (the scan area's size) placed on a zero array of the whole image's shape."""
        out = np.zeros(shape, dtype=part.dtype)
        out[self.top:self.bottom, self.left:self.right] = part
        return out

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "left": self.left, "width": self.width, "height": self.height}

    def within(self, outer: ScanArea) -> ScanArea:
        """This area, found in ``outer``'s crop, in the coordinates of ``outer``'s image."""
        return ScanArea(self.top + outer.top, self.bottom + outer.top, self.left + outer.left,
                        self.right + outer.left)


def _margin(lit: np.ndarray) -> int:
    """How many leading entries of ``lit`` (per row or column: share of bright pixels) are
    margin; none when fewer than ``MIN_FRAME`` of them."""
    content = np.flatnonzero(lit >= FRACTION)
    margin = int(content[0]) if content.size else len(lit)
    return margin if margin >= MIN_FRAME * len(lit) else 0


def find_scan_area(image: np.ndarray) -> ScanArea:
    """The scan area of a gray float image in [0, 1] (see the module's docstring)."""
    h, w = image.shape
    bright = image > LEVEL
    rows, cols = bright.mean(axis=1), bright.mean(axis=0)
    top, left, right = _margin(rows), _margin(cols), _margin(cols[::-1])
    framed = top or left or right
    bottom = _margin(rows[::-1]) if framed else 0
    area = ScanArea(top, h - bottom, left, w - right)
    if area.height < MIN_SHARE * h or area.width < MIN_SHARE * w:
        return ScanArea(0, h, 0, w)
    return area


def bounding(areas: list[ScanArea] | tuple[ScanArea, ...]) -> ScanArea:
    """The smallest area holding all of ``areas`` (at least one)."""
    return ScanArea(min(a.top for a in areas), max(a.bottom for a in areas),
                    min(a.left for a in areas), max(a.right for a in areas))


def find_scan_area_within(image: np.ndarray, outer: ScanArea | None) -> ScanArea:
    """The scan area inside ``outer`` (a DICOM's declared regions, say), in the image's
    coordinates: the black frame rule applied to ``outer``'s crop; the whole image's without
    ``outer``."""
    if outer is None:
        return find_scan_area(image)
    return find_scan_area(outer.crop(image)).within(outer)


def split_dual_view(image: np.ndarray, outer: ScanArea | None = None
                    ) -> tuple[ScanArea, ScanArea]:
    """The two panes (left, right) of a dual-view capture: two scans side by side, as scanners
    show a lesion's two planes and as BUS-BRA's -l/-r images were cut from. The panes are split
    at the black gap between them nearest the middle (looked for in ``GAP_BAND`` of the scan
    area's width), and each pane is cut to its own scan area. Without such a gap the capture is
    refused (NoDualView) rather than cut through tissue at a guess. ``outer``: where in the
    image to look (a DICOM's one declared region holding both panes)."""
    outer = find_scan_area_within(image, outer)
    part = outer.crop(image)
    w = part.shape[1]
    dark = (part > LEVEL).mean(axis=0) < FRACTION
    lo, hi = int(GAP_BAND[0] * w), int(GAP_BAND[1] * w)
    gaps = np.flatnonzero(dark[lo:hi]) + lo
    if gaps.size == 0:
        raise NoDualView("no black gap between two panes near the middle of the image: it does "
                         "not look like a dual-view capture (give the two views as two files)")
    # the gap's column nearest the middle, and the run of gap columns around it
    middle = int(gaps[np.argmin(np.abs(gaps - w / 2))])
    start, stop = middle, middle + 1
    while start > 0 and dark[start - 1]:
        start -= 1
    while stop < w and dark[stop]:
        stop += 1
    if min(start, w - stop) < MIN_SHARE * w / 2:
        raise NoDualView(TOO_NARROW)
    panes = []
    for left, right in ((0, start), (stop, w)):
        pane = ScanArea(0, part.shape[0], left, right)
        panes.append(find_scan_area(pane.crop(part)).within(pane).within(outer))
    if min(p.width for p in panes) < MIN_SHARE * w / 2:
        raise NoDualView(TOO_NARROW)
    return panes[0], panes[1]
