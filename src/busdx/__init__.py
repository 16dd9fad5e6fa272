"""busdx: decision support for breast ultrasound. Not a medical device and not a diagnosis."""

__version__ = "0.1.0"

DISCLAIMER = (
    "busdx is decision support for trained readers, not a diagnosis and not a medical device. "
    "Every result must be checked by a qualified clinician."
)
