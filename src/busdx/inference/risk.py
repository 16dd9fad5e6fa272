"""BI-RADS-aligned risk bands from the calibrated probability of malignancy.

An aid for reading the probability, not a BI-RADS assessment: the bands follow the likelihoods
of malignancy that the ACR BI-RADS atlas attaches to categories 3 to 5.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RiskBand:
    name: str
    low: float  # inclusive lower bound of the calibrated probability
    high: float  # exclusive upper bound (1.0 inclusive for the last band)
    text: str

    def as_dict(self) -> dict:
        """The API's ``risk_band`` object."""
        return {"name": self.name, "text": self.text, "low": self.low, "high": self.high}


RISK_BANDS = (
    RiskBand("3", 0.0, 0.02, "probably benign (<= 2%)"),
    RiskBand("4A", 0.02, 0.10, "low suspicion (2-10%)"),
    RiskBand("4B", 0.10, 0.50, "moderate suspicion (10-50%)"),
    RiskBand("4C", 0.50, 0.95, "high suspicion (50-95%)"),
    RiskBand("5", 0.95, 1.0, "highly suggestive of malignancy (>= 95%)"),
)


def risk_band(probability: float) -> RiskBand:
    """The band holding ``probability`` (3 includes 0.02 itself, 5 starts at 0.95)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability} is outside [0, 1]")
    if probability <= RISK_BANDS[0].high:
        return RISK_BANDS[0]
    for band in RISK_BANDS[1:-1]:
        if probability < band.high:
            return band
    return RISK_BANDS[-1]
