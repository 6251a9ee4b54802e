"""Synthetic CT series for the benchmarks: a realistic 512x512 phantom, and Part 10 files;
small images of CT, MR, CR and DX studies for filling an archive (bench/scale.py).

The slices are 512x512 signed 16-bit CT (stored value = HU + 1024, Rescale Intercept
-1024): a body of ellipses of different HU (fat, soft tissue, liver, lungs, aorta with
contrast, vertebra) that changes along the series, Gaussian noise (sigma 12 HU), air
inside the field of view and -2048 HU padding outside it.

:func:`make_slices` gives the same pixels for the same count (fixed seed); ``bench/codec.py``
uses it too, so codec figures and appliance figures are measured on one series.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

SIZE = 512
NOISE_HU = 12.0
INTERCEPT = -1024
SEED = 20240601
PIXEL_SPACING_MM = 0.7
SLICE_THICKNESS_MM = 1.0
# (x, y, half-axis x, half-axis y, HU) in units of the half image width, body first
ELLIPSES = (
    (0.0, 0.05, 0.80, 0.60, -100.0),  # subcutaneous fat
    (0.0, 0.05, 0.74, 0.54, 45.0),  # soft tissue
    (-0.30, -0.05, 0.30, 0.28, 60.0),  # liver
    (-0.35, -0.10, 0.22, 0.30, -850.0),  # right lung base
    (0.35, -0.10, 0.22, 0.30, -850.0),  # left lung base
    (0.0, 0.18, 0.06, 0.06, 250.0),  # aorta with contrast
    (0.0, 0.40, 0.10, 0.09, 700.0),  # vertebra
    (0.0, 0.40, 0.05, 0.04, 250.0),  # its marrow
)


def phantom(index: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """One CT slice as stored int16 values (HU + 1024).

    Parameters
    ----------
    index, count
        Position of the slice in the series; organs grow and shrink along it.
    rng
        Noise source.

    Returns
    -------
    numpy.ndarray
        (512, 512) int16.
    """
    y, x = (np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2) / (SIZE / 2)
    hu = np.full((SIZE, SIZE), -1000.0)
    t = index / max(count - 1, 1)
    for number, (cx, cy, ax, ay, value) in enumerate(ELLIPSES):
        scale = 1.0 if number < 2 else 0.6 + 0.6 * np.sin(np.pi * (t + 0.1 * number)) ** 2
        hu[((x - cx) / (ax * scale)) ** 2 + ((y - cy) / (ay * scale)) ** 2 < 1] = value
    hu += rng.normal(0.0, NOISE_HU, hu.shape)
    hu[x**2 + y**2 > 0.97] = -2048.0
    return np.round(hu - INTERCEPT).astype(np.int16)


def make_slices(count: int, seed: int = SEED) -> list[np.ndarray]:
    """``count`` phantom slices; the same pixels for the same ``count`` and ``seed``."""
    rng = np.random.default_rng(seed)
    return [phantom(i, count, rng) for i in range(count)]


def pixels_digest(slices: list[np.ndarray]) -> str:
    """SHA-256 of the slices' bytes, to show two benchmarks used the same pixels."""
    digest = hashlib.sha256()
    for pixels in slices:
        digest.update(pixels.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Series:
    """A synthesized series written as Part 10 files."""

    study_uid: str
    series_uid: str
    sop_uids: list[str]
    files: list[Path]
    pixels_sha256: str

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _patient_and_study(ds: Dataset, study_uid: str, when: dt.datetime) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = "BENCH^PHANTOM", "NNBENCH0001"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.StudyID = study_uid, "1"
    ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.AccessionNumber, ds.ReferringPhysicianName = "NNB0001", ""
    ds.StudyDescription = "NeuroNova benchmark CT (synthetic phantom)"


def _series_and_equipment(ds: Dataset, series_uid: str, frame_uid: str) -> None:
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 1
    ds.SeriesDescription, ds.Modality = "Axial 1.0 mm (synthetic)", "CT"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer, ds.ManufacturerModelName = "NeuroNova bench", "synthetic.py"
    ds.KVP, ds.BodyPartExamined = 120, "CHEST"


def _image(ds: Dataset, pixels: np.ndarray, index: int) -> None:
    z = -index * SLICE_THICKNESS_MM
    corner = -(SIZE / 2) * PIXEL_SPACING_MM
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber, ds.AcquisitionNumber = index + 1, 1
    ds.ImagePositionPatient = [corner, corner, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation, ds.SliceThickness = z, SLICE_THICKNESS_MM
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.astype("<i2").tobytes()


def ct_file_dataset(
    pixels: np.ndarray, index: int, study_uid: str, series_uid: str, frame_uid: str
) -> Dataset:
    """A complete CT Image Storage dataset (Explicit VR Little Endian) for one slice."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    now = dt.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), "000000"
    _patient_and_study(ds, study_uid, now)
    _series_and_equipment(ds, series_uid, frame_uid)
    _image(ds, pixels, index)
    return ds


def write_series(directory: Path, slices: list[np.ndarray]) -> Series:
    """Write one series of Part 10 files (``NNNN.dcm``) holding ``slices``."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sops, files = [], []
    for index, pixels in enumerate(slices):
        ds = ct_file_dataset(pixels, index, study_uid, series_uid, frame_uid)
        path = directory / f"{index + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        sops.append(str(ds.SOPInstanceUID))
        files.append(path)
    return Series(study_uid, series_uid, sops, files, pixels_digest(slices))


# Small images of several modalities, for filling an archive (bench/scale.py): the size
# of a real archive is in its count of instances, studies and patients, not in its pixels.
SMALL_SOP_CLASSES = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}


@dataclass(frozen=True)
class StudySpec:
    """Who and when: the patient and study attributes of a synthesized study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    description: str


@dataclass(frozen=True)
class SeriesSpec:
    """One series of a synthesized study: ``count`` images of ``rows`` x ``columns``."""

    series_uid: str
    modality: str
    number: int
    description: str
    count: int
    rows: int
    columns: int


def small_image(spec: SeriesSpec, index: int, rng: np.random.Generator) -> np.ndarray:
    """A cheap ``rows`` x ``columns`` image: a disc that changes along the series, with
    noise; int16 HU + 1024 for CT, 12-bit unsigned for the other modalities."""
    y, x = np.ogrid[0 : spec.rows, 0 : spec.columns]
    t = index / max(spec.count - 1, 1)
    radius = min(spec.rows, spec.columns) * (0.25 + 0.15 * np.sin(np.pi * t))
    inside = (y - spec.rows / 2) ** 2 + (x - spec.columns / 2) ** 2 < radius**2
    base = np.where(inside, 1100.0, 30.0 if spec.modality == "CT" else 200.0)
    noisy = base + rng.normal(0.0, NOISE_HU, base.shape)
    kind = np.int16 if spec.modality == "CT" else np.uint16
    return np.clip(np.round(noisy), 0, 4095).astype(kind)


def small_dataset(
    study: StudySpec, series: SeriesSpec, index: int, sop_uid: str, pixels: np.ndarray
) -> Dataset:
    """A complete image dataset (Explicit VR Little Endian) of ``series.modality``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SMALL_SOP_CLASSES[series.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.StudyInstanceUID, ds.StudyID = study.study_uid, "1"
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.AccessionNumber, ds.ReferringPhysicianName = study.accession, ""
    ds.StudyDescription = study.description
    ds.SeriesInstanceUID, ds.SeriesNumber = series.series_uid, series.number
    ds.SeriesDescription, ds.Modality = series.description, series.modality
    ds.Manufacturer, ds.ManufacturerModelName = "NeuroNova bench", "synthetic.py"
    ds.InstanceNumber = index + 1
    if series.modality in ("CT", "MR"):
        ds.ImagePositionPatient = [0, 0, -index * SLICE_THICKNESS_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.PixelSpacing = SLICE_THICKNESS_MM, [1, 1]
    if series.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    signed = series.modality == "CT"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16 if signed else 12, 15 if signed else 11
    ds.PixelRepresentation = int(signed)
    if signed:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def write_small_study(
    directory: Path, study: StudySpec, series: list[SeriesSpec], seed: int
) -> list[Path]:
    """Write every image of ``study`` as Part 10 files in ``directory``; their paths.

    The SOP Instance UIDs derive from the series UID and the image's number, so the same
    specs give the same UIDs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for spec in series:
        for index in range(spec.count):
            sop_uid = generate_uid(entropy_srcs=[spec.series_uid, str(index)])
            ds = small_dataset(study, spec, index, sop_uid, small_image(spec, index, rng))
            path = directory / f"{spec.number:03d}-{index + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(path)
    return files
