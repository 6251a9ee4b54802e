"""DICOM objects for tests: pydicom's sample files and synthetic native datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def read(name: str) -> pydicom.FileDataset:
    """One of pydicom's sample files, by name."""
    return pydicom.dcmread(TEST_FILES / name)


def renamed_copy(source: Path, target: Path) -> Dataset:
    """``source`` saved as ``target`` under fresh UIDs (pydicom's files share some);
    transfer syntax and pixel bytes untouched."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return ds


def native_dataset(pixels: np.ndarray, **attributes: object) -> Dataset:
    """A monochrome CT image in Explicit VR Little Endian holding ``pixels`` as they are.

    Bits and Pixel Representation follow the array's dtype; fresh UIDs;
    ``attributes`` (keyword=value) are set last and override any of these.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds
