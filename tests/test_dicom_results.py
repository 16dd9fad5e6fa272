"""DICOM results: the SR (TID 1500) and SEG that ``busdx predict --dicom-out`` and the API
write read back with highdicom to the analysis's values, and dciodvfy finds no error in them."""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from busdx.cli.main import main
from stand_in_models import calibration_region, dicom_bytes
from tiers import unavailable

FIXTURE = Path(__file__).parent / "fixtures" / "busbra" / "Images" / "bus_0360-l.png"
MODELS = Path(__file__).resolve().parents[1] / "models"


def study_dicom(frames: np.ndarray, mm_per_pixel: float | None = 0.1, **keep) -> bytes:
    """An ultrasound DICOM as a scanner sends it: patient, study and series attributes."""
    from pydicom.uid import generate_uid

    h, w = frames.shape[-2:]
    regions = [calibration_region(mm_per_pixel, w, h)] if mm_per_pixel else None
    ds = pydicom.dcmread(BytesIO(dicom_bytes(frames, regions=regions)))
    if frames.ndim == 3:  # a loop is of the multi-frame class
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P", "", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "101010", "A1", "1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    for key, value in keep.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _scan() -> np.ndarray:
    return np.asarray(Image.open(FIXTURE).convert("L"))


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: r for r in csv.DictReader(fh)}


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        unavailable("dciodvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    return [line for line in (done.stdout + done.stderr).splitlines()
            if line.startswith("Error")]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """``busdx predict --dicom-out`` over a single-frame scan and a two-frame loop."""
    folder = tmp_path_factory.mktemp("dicom")
    scan = _scan()
    (folder / "in").mkdir()
    (folder / "in" / "scan.dcm").write_bytes(study_dicom(scan))
    (folder / "in" / "loop.dcm").write_bytes(study_dicom(np.stack([scan[::-1], scan])))
    (folder / "in" / "plain.png").write_bytes(FIXTURE.read_bytes())
    assert main(["predict", str(folder / "in"), "--csv", str(folder / "out.csv"),
                 "--masks-dir", str(folder / "masks"), "--dicom-out", str(folder / "dcm"),
                 "--models", str(MODELS)]) == 0
    assert main(["predict", str(folder / "in" / "loop.dcm"), "--frame", "2", "--csv",
                 str(folder / "loop2.csv"), "--dicom-out", str(folder / "dcm2"),
                 "--models", str(MODELS)]) == 0
    return folder


def test_the_report_reads_back_to_the_analysis(predicted):
    row = _rows(predicted / "out.csv")["scan.dcm"]
    assert row["lesion_found"] == "true" and row["units"] == "mm"
    sr = hd.sr.srread(predicted / "dcm" / "scan_sr.dcm")
    source = pydicom.dcmread(predicted / "in" / "scan.dcm")
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == "P1"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    (group,) = sr.content.get_planar_roi_measurement_groups()
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values["Probability of cancer"][0] == pytest.approx(float(row["probability"]),
                                                               abs=1e-6)
    assert values["Long axis"] == (pytest.approx(float(row["longest_diameter"]), abs=1e-6),
                                   "mm")
    assert values["Area"] == (pytest.approx(float(row["area"]), abs=1e-6), "mm2")
    calls = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert calls["Call at the validated threshold"].meaning.lower() == row["label"]
    assert calls["BI-RADS-aligned risk band"].value == row["risk_band"]
    assert row["model_version"] in str(sr)  # the models' release is the algorithm's version
    region = group.roi
    image = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    outline = region.value.reshape(-1, 2)
    mask = np.asarray(Image.open(predicted / "masks" / "scan.png")) > 0
    rows, cols = np.nonzero(mask)
    # the outline runs around the mask, on the source's pixel grid
    assert outline[:, 0].min() >= cols.min() - 1 and outline[:, 0].max() <= cols.max() + 2
    assert outline[:, 1].min() >= rows.min() - 1 and outline[:, 1].max() <= rows.max() + 2


def test_the_segmentation_is_the_mask_on_the_source_grid(predicted):
    seg = hd.seg.segread(predicted / "dcm" / "scan_seg.dcm")
    source = pydicom.dcmread(predicted / "in" / "scan.dcm")
    assert seg.number_of_segments == 1
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    got = seg.get_pixels_by_source_instance(
        [source.SOPInstanceUID], combine_segments=True)[0]
    mask = np.asarray(Image.open(predicted / "masks" / "scan.png")) > 0
    assert got.shape == mask.shape and np.array_equal(got > 0, mask)


def test_dciodvfy_finds_no_error(predicted):
    for name in ("scan_sr.dcm", "scan_seg.dcm", "loop_sr.dcm", "loop_seg.dcm"):
        assert _dciodvfy_errors(predicted / "dcm" / name) == [], name


def test_a_loop_references_the_frame_analysed(predicted):
    for folder, frame in (("dcm", 1), ("dcm2", 2)):
        sr = hd.sr.srread(predicted / folder / "loop_sr.dcm")
        (group,) = sr.content.get_planar_roi_measurement_groups()
        image = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert int(image.ReferencedFrameNumber) == frame
        seg = hd.seg.segread(predicted / folder / "loop_seg.dcm")
        frames = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
                  for f in seg.PerFrameFunctionalGroupsSequence]
        assert frames == [frame]


def test_a_png_gets_no_dicom_results(predicted):
    assert not list((predicted / "dcm").glob("plain*"))


def test_no_lesion_gives_a_report_that_says_so_and_no_segmentation(tmp_path):
    from busdx.inference import Models, analyze
    from busdx.inference.dicom_results import dicom_results, source_dataset
    from busdx.inference.pipeline import NO_LESION

    data = study_dicom(_scan())
    analysis = analyze(data, Models.load(MODELS), render_overlays=False)
    nothing = replace(analysis, mask=np.zeros_like(analysis.mask), lesion_found=False,
                      label=NO_LESION, measurements=None)
    results = dicom_results(source_dataset(data), nothing)
    assert results.seg is None
    path = tmp_path / "none_sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    sr = hd.sr.srread(path)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type.meaning == "No lesion found"
    assert group.get_qualitative_evaluations() == []  # no call without a lesion
    assert group.get_measurements() == []
    assert _dciodvfy_errors(path) == []


def test_a_withheld_call_is_stored_as_withheld_with_no_band(tmp_path):
    """On an image that may not be a breast ultrasound the SR keeps the outline and the
    probability for reference, codes the call as withheld, never benign or malignant, and gives
    no risk band."""
    from busdx.inference import Models, analyze
    from busdx.inference.dicom_results import dicom_results, source_dataset
    from busdx.inference.pipeline import WITHHELD, WITHHELD_NOTE

    data = study_dicom(_scan())
    analysis = analyze(data, Models.load(MODELS), render_overlays=False)
    assert analysis.lesion_found
    withheld = replace(analysis, label=WITHHELD, risk=None, note=WITHHELD_NOTE)
    results = dicom_results(source_dataset(data), withheld)
    assert results.seg is not None
    path = tmp_path / "withheld_sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    (group,) = hd.sr.srread(path).content.get_planar_roi_measurement_groups()
    calls = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert calls["Call at the validated threshold"].value == "call-withheld"
    assert "BI-RADS-aligned risk band" not in calls
    assert _dciodvfy_errors(path) == []


def test_a_source_it_cannot_reference_gets_a_note_not_files(tmp_path):
    (tmp_path / "bare.dcm").write_bytes(study_dicom(_scan(), StudyInstanceUID=None))
    assert main(["predict", str(tmp_path / "bare.dcm"), "--csv", str(tmp_path / "o.csv"),
                 "--dicom-out", str(tmp_path / "dcm"), "--models", str(MODELS)]) == 0
    row = _rows(tmp_path / "o.csv")["bare.dcm"]
    assert row["error"] == "" and "no DICOM results" in row["note"]
    assert "StudyInstanceUID" in row["note"]
    assert not list((tmp_path / "dcm").iterdir())


def test_a_pane_of_a_dual_view_capture_is_placed_on_the_capture(tmp_path):
    scan = _scan()
    gap = np.zeros((scan.shape[0], 60), scan.dtype)
    (tmp_path / "capture.dcm").write_bytes(study_dicom(np.hstack([scan, gap, scan])))
    assert main(["predict", str(tmp_path / "capture.dcm"), "--dual-view", "--csv",
                 str(tmp_path / "o.csv"), "--dicom-out", str(tmp_path / "dcm"),
                 "--masks-dir", str(tmp_path / "masks"), "--models", str(MODELS)]) == 0
    sr = hd.sr.srread(tmp_path / "dcm" / "capture-right_sr.dcm")
    (group,) = sr.content.get_planar_roi_measurement_groups()
    evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert evaluations["Pane of a dual-view capture"] == "Right pane"
    outline = group.roi.value.reshape(-1, 2)
    assert outline[:, 0].min() >= scan.shape[1] + gap.shape[1] - 1  # in the right pane
    seg = hd.seg.segread(tmp_path / "dcm" / "capture-right_seg.dcm")
    source = pydicom.dcmread(tmp_path / "capture.dcm")
    got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    assert got.shape == (source.Rows, source.Columns)
    assert not got[:, : scan.shape[1]].any() and got.any()
