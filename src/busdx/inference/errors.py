"""Input errors with the HTTP status each deserves; their messages are safe to show a user
(they never contain file names or image content)."""

from __future__ import annotations

from busdx.data.preprocess import ImageError


class InputError(ImageError):
    """An upload or file that cannot be analysed. ``status`` is the HTTP answer; ``extra``,
    fields the answer carries beside its ``detail`` (a cine loop's frame count, say)."""

    status = 422

    def __init__(self, *args, extra: dict | None = None) -> None:
        super().__init__(*args)
        self.extra = extra or {}


class EmptyInput(InputError):
    status = 400


class TooLarge(InputError):
    """Over the byte limit or the pixel limit (decompression bombs)."""

    status = 413


class UnsupportedFormat(InputError):
    """Not an image we read, or a DICOM we cannot decode."""

    status = 415


class CorruptImage(InputError):
    """A known format whose data is damaged or truncated."""

    status = 422


class NotUltrasound(InputError):
    """A DICOM file that declares another modality (CT, MR, a radiograph...)."""

    status = 422


class BlankImage(InputError):
    """An image (or the scan area or pane of one) with nothing to analyse: one grey level
    nearly everywhere, or a strip too thin to hold a lesion."""

    status = 422


class NoSuchFrame(InputError):
    """A frame number the file does not have (a cine loop's frame 40 of 30, say)."""

    status = 422
