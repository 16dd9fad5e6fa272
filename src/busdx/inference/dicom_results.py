"""Results as DICOM objects, for a PACS and DICOM viewers: a measurement report (Comprehensive
SR, TID 1500) and a binary segmentation (SEG) of one analysed DICOM image, written with
highdicom.

The report says, for the image (and the frame and pane analysed) it references:

- with a lesion: one planar region (TID 1410) whose outline is the lesion's contour on the
  source image's pixel grid, with the probability of malignancy (DCM 111047 "Probability of
  cancer"), the call at the validated threshold (SCT benign or malignant; "Call withheld" and
  no risk band when the image may not be a breast ultrasound at all), the threshold, the
  risk band, and each measurement in mm when the image is calibrated (in pixels otherwise is
  not reported: a PACS would read pixels as lengths);
- without one: an image-level group (TID 1501) whose finding is "No lesion found" and no call.

busdx, its version and the release of its models are the algorithm (and the device observer)
of every measurement. Concepts with no standard code use the local coding scheme ``99BUSDX``
(:data:`LOCAL_SCHEME`). The segmentation has one segment, the lesion, on the source's grid; a
scan with no lesion gets none. Both series say that the results are decision support, not a
diagnosis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO

import numpy as np

from busdx import __version__
from busdx.errors import BusdxError
from busdx.inference.pipeline import WITHHELD

log = logging.getLogger(__name__)

LOCAL_SCHEME = "99BUSDX"
MANUFACTURER = "busdx (open source)"
SERIES_DESCRIPTION = "busdx decision support, not a diagnosis"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # single-frame ultrasound
SR_SERIES_NUMBER = 9901
SEG_SERIES_NUMBER = 9902
# what a source must carry to be referenced by SR and SEG
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows",
            "Columns")


@dataclass(frozen=True)
class DicomResults:
    sr: object  # pydicom Dataset: the measurement report
    seg: object | None  # pydicom Dataset: the segmentation; None when no lesion was found

    def parts(self) -> dict[str, bytes]:
        """Part 10 bytes by file suffix: ``_sr`` and, with a lesion, ``_seg``."""
        out = {"_sr": to_bytes(self.sr)}
        if self.seg is not None:
            out["_seg"] = to_bytes(self.seg)
        return out


def to_bytes(dataset) -> bytes:
    buf = BytesIO()
    dataset.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _local(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, LOCAL_SCHEME, meaning)


def concepts() -> dict:
    """The coded concepts of the report, by role."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "probability": codes.DCM.ProbabilityOfCancer,
        "call": _local("call", "Call at the validated threshold"),
        "threshold": _local("threshold", "Decision threshold on the probability"),
        "risk_band": _local("risk-band", "BI-RADS-aligned risk band"),
        "no_lesion": _local("no-lesion", "No lesion found"),
        # the call's values, by the analysis's label
        WITHHELD: _local("call-withheld", "Call withheld: may not be a breast ultrasound"),
        "pane": _local("pane", "Pane of a dual-view capture"),
        "lesion": codes.SCT.Lesion,
        "benign": codes.SCT.Benign,
        "malignant": codes.SCT.Malignant,
        "breast": codes.SCT.Breast,
        "procedure": Code("47079000", "SCT", "Ultrasonography of breast"),
        "abnormal": Code("49755003", "SCT", "Morphologically abnormal structure"),
        "unitless": Code("1", "UCUM", "no units"),
        "mm": Code("mm", "UCUM", "millimeter"),
        "mm2": Code("mm2", "UCUM", "square millimeter"),
        "longest_diameter": codes.SCT.LongAxis,
        "width": codes.SCT.Width,
        "height": codes.DCM.Height,
        "area": codes.SCT.Area,
        "perimeter": codes.SCT.Perimeter,
        "circularity": _local("circularity", "Circularity"),
        "solidity": _local("solidity", "Solidity"),
        "orientation": _local("orientation", "Orientation to the skin"),
    }


def source_dataset(data: bytes):
    """The source image's header (pixels left out): what SR and SEG reference."""
    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception as err:  # pydicom raises many kinds for a broken file
        raise BusdxError(f"not a readable DICOM file: {err}") from err
    missing = [k for k in REQUIRED if k not in ds]
    if missing:
        raise BusdxError(f"the DICOM file lacks {', '.join(missing)}: its results cannot "
                         "reference it")
    return ds


def dicom_files(data: bytes, analysis) -> dict[str, bytes]:
    """The SR and (with a lesion) SEG of ``analysis`` of the DICOM file ``data``, by suffix."""
    return dicom_results(source_dataset(data), analysis).parts()


def mask_on_source(analysis, rows: int, columns: int) -> np.ndarray:
    """The analysis's mask on the source image's grid (a pane is put back where it was)."""
    mask = np.asarray(analysis.mask, dtype=np.uint8)
    if analysis.pane is not None:
        mask = analysis.pane[1].paste(mask, (rows, columns))
    if mask.shape != (rows, columns):
        raise BusdxError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the source image "
                         f"{columns}x{rows}")
    return (mask > 0).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The largest region's contour as (column, row) points at pixel centres, closed."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise BusdxError("the mask holds no region")
    points = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float32) + 0.5
    if len(points) < 3:  # a region of one or two pixels: its bounding square
        c, r = points.min(axis=0) - 0.5
        points = np.array([[c, r], [c + 1, r], [c + 1, r + 1], [c, r + 1]], np.float32)
    return np.vstack([points, points[:1]])


def dicom_results(source, analysis, uid_root: str | None = None) -> DicomResults:
    """SR (and SEG, with a lesion) for ``analysis`` of the DICOM dataset ``source``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    c = concepts()
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    frame = [analysis.frame] if frames > 1 else None
    algorithm = hd.sr.AlgorithmIdentification(
        name="busdx", version=f"{__version__} (models {analysis.model_version})",
        parameters=[f"threshold={analysis.threshold:.6g}"])
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(prefix=uid_root), name="busdx", manufacturer_name=MANUFACTURER,
            model_name=f"busdx {__version__}", serial_number=analysis.model_version))
    context = hd.sr.ObservationContext(observer_person_context=None,
                                       observer_device_context=observer)
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(prefix=uid_root),
                                        identifier="busdx lesion 1")
    qualitative = []
    if analysis.pane is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(
            c["pane"], _local(analysis.pane[0], f"{analysis.pane[0].capitalize()} pane")))
    seg = None
    if analysis.lesion_found:
        mask = mask_on_source(analysis, int(source.Rows), int(source.Columns))
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline(mask),
            source_image=hd.sr.SourceImageForRegion(
                source.SOPClassUID, source.SOPInstanceUID, referenced_frame_numbers=frame))
        qualitative.append(hd.sr.QualitativeEvaluation(c["call"], c[analysis.label]))
        if analysis.risk is not None:  # none on a withheld call
            qualitative.append(hd.sr.QualitativeEvaluation(
                c["risk_band"], _local(analysis.risk.name, analysis.risk.text[:64])))
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=c["lesion"],
            algorithm_id=algorithm, finding_sites=[hd.sr.FindingSite(c["breast"])],
            measurements=_measurements(analysis, algorithm, c),
            qualitative_evaluations=qualitative)
        seg = _segmentation(source, mask, analysis, frames, uid_root)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=c["no_lesion"], algorithm_id=algorithm,
            qualitative_evaluations=qualitative or None)
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=c["procedure"],
                                     imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=generate_uid(prefix=uid_root),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(prefix=uid_root),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=SERIES_DESCRIPTION)
    return DicomResults(sr=sr, seg=seg)


def _measurements(analysis, algorithm, c) -> list:
    import highdicom as hd

    m = analysis.measurements
    out = [
        hd.sr.Measurement(name=c["probability"], value=float(analysis.probability),
                          unit=c["unitless"], algorithm_id=algorithm),
        hd.sr.Measurement(name=c["threshold"], value=float(analysis.threshold),
                          unit=c["unitless"], algorithm_id=algorithm),
    ]
    if m is None:
        return out
    if m.units == "mm":
        for key in ("longest_diameter", "width", "height", "perimeter"):
            out.append(hd.sr.Measurement(name=c[key], value=float(getattr(m, key)),
                                         unit=c["mm"], algorithm_id=algorithm))
        out.append(hd.sr.Measurement(name=c["area"], value=float(m.area), unit=c["mm2"],
                                     algorithm_id=algorithm))
    for key in ("circularity", "solidity"):  # ratios: the same in any unit
        out.append(hd.sr.Measurement(name=c[key], value=float(getattr(m, key)),
                                     unit=c["unitless"], algorithm_id=algorithm))
    return out


def _segmentation(source, mask: np.ndarray, analysis, frames: int, uid_root: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    c = concepts()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="busdx", family=codes.cid7162.ArtificialIntelligence,
        version=f"{__version__} (models {analysis.model_version})")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=c["abnormal"], segmented_property_type=c["lesion"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    # one frame, the analysed one's mask (highdicom takes one frame from a source without a
    # frame of reference, as ultrasound is; a loop's frame is referenced below)
    stack = mask[None]
    header = source
    if frames > 1:
        # highdicom segments one frame of a source without a frame of reference (ultrasound
        # has none) only if the source has one frame: it is shown the header as one frame, and
        # the loop's frame is referenced below
        import copy

        header = copy.deepcopy(source)  # the header alone: read without its pixels
        del header.NumberOfFrames
        header.SOPClassUID = US_IMAGE_STORAGE
    try:
        seg = hd.seg.Segmentation(
            source_images=[header], pixel_array=stack,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment], series_instance_uid=generate_uid(prefix=uid_root),
            series_number=SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(prefix=uid_root),
            instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="busdx", software_versions=__version__,
            device_serial_number=analysis.model_version, series_description=SERIES_DESCRIPTION)
    except (ValueError, TypeError, AttributeError) as err:
        raise BusdxError(f"cannot write a segmentation of this image: {err}") from err
    if frames > 1:  # the loop itself, and the frame of it the mask belongs to
        refs = [ref for item in seg.PerFrameFunctionalGroupsSequence
                for derivation in item.get("DerivationImageSequence", [])
                for ref in derivation.SourceImageSequence]
        for ref in [*refs, *seg.get("SourceImageSequence", [])]:
            ref.ReferencedSOPClassUID = source.SOPClassUID
            ref.ReferencedFrameNumber = analysis.frame
    if "ImageOrientationSlide" not in seg and "PlaneOrientationSequence" not in seg.get(
            "SharedFunctionalGroupsSequence", [{}])[0]:
        # an ultrasound source has no patient frame: General Image then asks for this (2C)
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
