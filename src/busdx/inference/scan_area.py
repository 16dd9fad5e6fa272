"""The scan area of an image: the image without the black margins a screen capture adds.

BUS-BRA's images are cut to the scan area, and the networks learned from them. A screen capture
or an export from another system often puts the scan in a black frame; the segmenter then sees
a smaller lesion and the two-view classifier a shrunken scan. On the validation images a black
frame lowers the AUC and, more, the sensitivity at the frozen threshold, and cutting it off first
gives the networks the image they were trained on (``studies/margins.py`` measures both;
``reports/studies/margins.json``).

A margin is a run of border rows (columns) in which fewer than ``FRACTION`` of the pixels are
above ``LEVEL``: black, give or take compression noise; runs thinner than ``MIN_FRAME`` of the
side are left alone. The bottom edge is special: deep in the breast the echo fades, and some of
BUS-BRA's scans end in rows as black as a margin. The bottom is therefore cut only when another
edge had a margin (the image is framed).

A scanner's screen also writes in its margins: a title, the settings, a depth scale, a body
marker. Taken for tissue, they would stop the cut. So the rule is run a second time on the scan's
own pixels: the bright pixels of the large connected regions (``BLOCK``-pixel blocks mostly
bright, in components at least ``KEEP`` of the largest), which text, thin lines and small
symbols are not. The top, left or right edge is cut deeper by this second run only where the
strip it removes looks like annotations: sparse (at most ``SPARSE`` of its pixels bright) and
drawn bright (at least ``MARK_SHARE`` of their light in pixels at or above ``MARK``), which a
faded far field or a darkened scan's dim speckle is not. The bottom is left to the black frame
rule, since some scans carry text burned into their faded far field (bus_0165-l's "MAMA
ESQUERDA"). A DICOM file's declared regions, when there are any, bound the scan before any of
this (busdx.inference.pipeline).

An image cut to its scan area, as BUS-BRA's all are, is left exactly as it is (a test checks this
on the whole dataset). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busdx.inference.components import large_components
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
# the scan's own pixels: blocks of BLOCK x BLOCK pixels mostly bright, in connected regions of
# at least KEEP of the largest one's blocks (two panes are both kept; text and lines are not)
BLOCK = 4
KEEP = 0.1
# a strip cut away as annotations holds at most SPARSE bright pixels, and at least MARK_SHARE of
# their light is in pixels at or above MARK: annotations are drawn bright, a faded far field's
# speckle is dim
SPARSE = 0.25
MARK = 0.5
MARK_SHARE = 0.5
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


def _margins(bright: np.ndarray) -> ScanArea:
    """The black frame rule on a mask of the pixels that count as bright."""
    h, w = bright.shape
    rows, cols = bright.mean(axis=1), bright.mean(axis=0)
    top, left, right = _margin(rows), _margin(cols), _margin(cols[::-1])
    framed = top or left or right
    bottom = _margin(rows[::-1]) if framed else 0
    area = ScanArea(top, h - bottom, left, w - right)
    if area.height < MIN_SHARE * h or area.width < MIN_SHARE * w:
        return ScanArea(0, h, 0, w)
    return area


def _scan_pixels(bright: np.ndarray) -> np.ndarray:
    """``bright`` without what lies outside the large connected regions (see the module's
    docstring); ``bright`` itself for an image too small to judge."""
    h, w = bright.shape
    hb, wb = h // BLOCK, w // BLOCK
    if hb < 8 or wb < 8:
        return bright
    blocks = bright[:hb * BLOCK, :wb * BLOCK].reshape(hb, BLOCK, wb, BLOCK).mean(axis=(1, 3))
    scan = large_components(blocks > 0.5, KEEP)
    if not scan.any():
        return bright
    # one block more all round, so that the scan's ragged edge keeps its pixels
    grown = scan.copy()
    grown[1:] |= scan[:-1]
    grown[:-1] |= scan[1:]
    scan = grown.copy()
    scan[:, 1:] |= grown[:, :-1]
    scan[:, :-1] |= grown[:, 1:]
    full = np.repeat(np.repeat(scan, BLOCK, axis=0), BLOCK, axis=1)
    full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
    return bright & full


def _annotations(image: np.ndarray, bright: np.ndarray, rows: slice, cols: slice) -> bool:
    """Whether the strip ``rows`` x ``cols`` holds only what a screen writes: sparse, bright
    marks (or nothing)."""
    strip = bright[rows, cols]
    count = int(strip.sum())
    if count > SPARSE * strip.size:
        return False
    if count == 0:
        return True
    # weighted by brightness: a compressed capture's ringing around text is many dim pixels
    # but little light, and the marks themselves carry most of it
    values = image[rows, cols][strip]
    return float(values[values >= MARK].sum() / values.sum()) >= MARK_SHARE


def _snap(lit: np.ndarray, edge: int) -> int:
    """``edge`` moved in to just past the black gap between a mark and the scan: the scan's
    pixels were grown by a block all round, which can keep a depth scale drawn a few pixels off
    the scan. ``lit``: each row's (column's) bright share, from ``edge`` inwards."""
    black = np.flatnonzero(lit[:2 * BLOCK] < FRACTION)
    return edge + int(black[-1]) + 1 if black.size else edge


def _may_be_annotated(bright: np.ndarray) -> bool:
    """Whether a screen's margin may lie along the top, left or right edge: a band there is at
    most half bright. Tissue reaching the edges is denser, and the search for annotations (a
    few milliseconds) is skipped."""
    h, w = bright.shape
    rows, cols = max(1, int(MIN_FRAME * h)), max(1, int(MIN_FRAME * w))
    return min(bright[:rows].mean(), bright[:, :cols].mean(), bright[:, -cols:].mean()) <= 0.5


def find_scan_area(image: np.ndarray) -> ScanArea:
    """The scan area of a gray float image in [0, 1] (see the module's docstring)."""
    h, w = image.shape
    bright = image > LEVEL
    frame = _margins(bright)
    if not _may_be_annotated(frame.crop(bright)):
        return frame
    marked = _margins(_scan_pixels(bright))
    if marked == frame:
        return frame
    top, bottom, left, right = frame.top, frame.bottom, frame.left, frame.right
    rows, cols = slice(frame.top, frame.bottom), slice(frame.left, frame.right)
    # the scan's own rows and columns, to find the black gap beside it without the marks
    scan = marked.crop(bright)
    if marked.top > top and _annotations(image, bright, slice(top, marked.top), cols):
        top = _snap(scan.mean(axis=1), marked.top)
    if marked.left > left and _annotations(image, bright, rows, slice(left, marked.left)):
        left = _snap(scan.mean(axis=0), marked.left)
    if marked.right < right and _annotations(image, bright, rows, slice(marked.right, right)):
        right = marked.right - _snap(scan.mean(axis=0)[::-1], 0)
    # the bottom by the black frame rule alone, below the scan's columns (text burned into a
    # faded far field looks just like a screen's marks), now that the marks beside it are gone
    if (top, left, right) != (frame.top, frame.left, frame.right):
        bottom = h - _margin(bright[:, left:right].mean(axis=1)[::-1])
    area = ScanArea(top, bottom, left, right)
    if area.height < MIN_SHARE * h or area.width < MIN_SHARE * w:
        return frame
    return area


def bounding(areas: list[ScanArea] | tuple[ScanArea, ...]) -> ScanArea | None:
    """The smallest area holding all of ``areas``; None for none."""
    if not areas:
        return None
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
