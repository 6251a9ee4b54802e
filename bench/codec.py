"""Benchmark the HTJ2K transcoding pipeline against bare encoders on synthetic CT slices.

Usage: ``python bench/codec.py [--out bench/results/codec.json] [--slices N]``

The slices are 512x512 signed 16-bit CT (stored value = HU + 1024, Rescale Intercept
-1024): a body of ellipses of different HU (fat, soft tissue, liver, lungs, aorta with
contrast, vertebra) that changes along the series, Gaussian noise (sigma 12 HU), air
inside the field of view and -2048 HU padding outside it. Per slice it times:

(a) the pipeline, ``transcode_to_htj2k`` on a native Explicit VR Little Endian dataset
    (decode + encode + verify + encapsulated dataset + frames), one slice per dataset,
    and per frame of one multi-frame dataset (verification overlaps the next encode);
(b) bare ``imagecodecs.htj2k_encode`` with the pipeline's options, timed right after (a)
    on the same slice, so both see the same machine load;
(c) ``ojph_compress`` (Debian openjph-tools), one process per slice, on a 16-bit PGM (the
    int16 values offset to unsigned) and, for size only, on a raw signed file: the time
    the tool reports itself ("Elapsed time", measured inside the process around reading,
    encoding and writing, so without process start-up), and the wall time per
    invocation minus the median wall time of invoking it on an 8x8 image;
(d) J2K lossless with OpenJPEG, ``imagecodecs.jpeg2k_encode(reversible=True)``, one
    thread.

Every codestream is decoded and compared with the slice before sizes are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.transcode.codec import HTJ2K_ENCODE_OPTIONS, transcode_to_htj2k
from bench.synthetic import INTERCEPT, NOISE_HU, SIZE, make_slices

PIPELINE_GOAL = 2.0
SIZE_GOAL = 1.06
MULTIFRAME_MAX = 100
REAL_IMAGES = ("J2K_pixelrep_mismatch.dcm", "CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm")


def ct_dataset(pixels: np.ndarray, index: int, study: str, series: str) -> Dataset:
    """A native Explicit VR Little Endian CT dataset holding ``pixels`` (one or more frames)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.InstanceNumber = "CT", index + 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(pixels)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.tobytes()
    return ds


def htj2k_encode(pixels: np.ndarray) -> bytes:
    """Bare ``imagecodecs.htj2k_encode`` with the pipeline's options."""
    return imagecodecs.htj2k_encode(pixels, **HTJ2K_ENCODE_OPTIONS)


def time_each(func: Callable[[object], object], items: Iterable[object]) -> list[float]:
    """Wall time in seconds of ``func(item)`` for each item."""
    times = []
    for item in items:
        start = time.perf_counter()
        func(item)
        times.append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and 95th percentile, in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }


def check_lossless(codestream: bytes, pixels: np.ndarray, decode: Callable) -> None:
    """Fail loudly if ``codestream`` does not decode to ``pixels``."""
    if not np.array_equal(decode(codestream), pixels):
        raise SystemExit("a benchmark codestream is not lossless")


def bench_pipeline(datasets: list[Dataset], slices: list[np.ndarray]) -> dict[str, object]:
    """(a) and (b), interleaved slice by slice so that both see the same machine load."""
    transcode_to_htj2k(datasets[0])
    htj2k_encode(slices[0])
    pipeline, bare, size, size_bare = [], [], 0, 0
    for ds, pixels in zip(datasets, slices, strict=True):
        start = time.perf_counter()
        result = transcode_to_htj2k(ds)
        middle = time.perf_counter()
        codestream = htj2k_encode(pixels)
        pipeline.append(middle - start)
        bare.append(time.perf_counter() - middle)
        check_lossless(result.frames[0], pixels, imagecodecs.htj2k_decode)
        size += len(result.frames[0])
        size_bare += len(codestream)
    return {"pipeline": pipeline, "bare": bare, "size": size, "size_bare": size_bare}


def bench_multiframe(slices: list[np.ndarray]) -> dict[str, object]:
    """(a) per frame of one multi-frame dataset of up to 100 slices, 3 runs, each followed
    by bare encodes of the same frames (per-frame seconds of both)."""
    frames = np.stack(slices[:MULTIFRAME_MAX])
    ds = ct_dataset(frames, 0, generate_uid(), generate_uid())
    pipeline, bare = [], []
    for _ in range(3):
        pipeline += [time_each(transcode_to_htj2k, [ds])[0] / len(frames)]
        bare += [statistics.fmean(time_each(htj2k_encode, frames))]
    return {"frames": len(frames), "pipeline": pipeline, "bare": bare}


def bench_encoder(slices: list[np.ndarray], encode: Callable, decode: Callable):
    """Times and total size of a bare in-process encoder."""
    encode(slices[0])
    codestreams = []
    times = time_each(lambda a: codestreams.append(encode(a)), slices)
    for codestream, pixels in zip(codestreams, slices, strict=True):
        check_lossless(codestream, pixels, decode)
    return times, sum(len(c) for c in codestreams)


def write_ojph_input(pixels: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    """Write ``pixels`` for ojph_compress; (file, the array its codestream must decode to).

    ``.pgm``: 16-bit PGM (unsigned, so int16 is offset by 32768, a bijection);
    ``.yuv``: raw signed 16-bit little endian.
    """
    if path.suffix == ".pgm":
        unsigned = pixels.view(np.uint16) ^ np.uint16(0x8000)
        header = f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n65535\n".encode()
        path.write_bytes(header + unsigned.astype(">u2").tobytes())
        return path, unsigned
    pixels.astype("<i2").tofile(path)
    return path, pixels


def ojph_run(source: Path, target: Path, shape: tuple[int, int]) -> tuple[float, float]:
    """Run ``ojph_compress`` once; (wall seconds, the seconds it reports)."""
    command = ["ojph_compress", "-i", str(source), "-o", str(target), "-reversible", "true"]
    if source.suffix == ".yuv":
        command += [
            "-dims", f"{{{shape[1]},{shape[0]}}}", "-num_comps", "1", "-signed", "true",
            "-bit_depth", "16", "-downsamp", "{1,1}",
        ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    match = re.search(r"Elapsed time = ([0-9.]+)", done.stdout + done.stderr)
    return wall, float(match.group(1)) if match else float("nan")


def bench_ojph(slices: list[np.ndarray], workdir: Path, suffix: str) -> dict[str, object]:
    """(c): per-invocation times of ojph_compress, start-up excluded two ways."""
    tiny, _ = write_ojph_input(np.zeros((8, 8), np.int16), workdir / f"tiny{suffix}")
    startup = [ojph_run(tiny, workdir / "tiny.j2c", (8, 8))[0] for _ in range(30)]
    walls, reported, size = [], [], 0
    for pixels in slices:
        source, expected = write_ojph_input(pixels, workdir / f"slice{suffix}")
        target = workdir / "slice.j2c"
        wall, own = ojph_run(source, target, pixels.shape)
        codestream = target.read_bytes()
        check_lossless(codestream, expected, imagecodecs.htj2k_decode)
        walls.append(wall)
        reported.append(own)
        size += len(codestream)
    start_s = statistics.median(startup)
    return {
        "input": "16-bit PGM, int16 offset to unsigned" if suffix == ".pgm" else "raw int16",
        "reported_by_tool": summary(reported),
        "wall_minus_startup": summary([w - start_s for w in walls]),
        "wall_per_invocation": summary(walls),
        "startup_ms": round(start_s * 1e3, 3),
        "size_bytes": size,
    }


def ojph_version() -> str:
    """Version of the installed openjph-tools package (dpkg), or 'unknown'."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "openjph-tools"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def real_image_sizes() -> list[dict[str, object]]:
    """HTJ2K vs J2K lossless sizes on the real CT/MR images shipped with pydicom."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    rows = []
    for name in REAL_IMAGES:
        pixels = pydicom.dcmread(folder / name).pixel_array
        htj2k = len(htj2k_encode(pixels))
        j2k = len(imagecodecs.jpeg2k_encode(pixels, reversible=True, numthreads=1))
        shape = "x".join(map(str, pixels.shape))
        ratio = round(htj2k / j2k, 4)
        rows.append({"file": name, "shape": shape, "htj2k": htj2k, "j2k": j2k, "ratio": ratio})
    return rows


def run(count: int) -> dict[str, object]:
    """Run every measurement on ``count`` slices and return the results."""
    slices = make_slices(count)
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(pixels, i, study, series) for i, pixels in enumerate(slices)]
    raw = sum(s.nbytes for s in slices)
    timed = bench_pipeline(datasets, slices)
    pipeline, bare, size_pipeline = timed["pipeline"], timed["bare"], timed["size"]
    multiframe = bench_multiframe(slices)
    j2k, size_j2k = bench_encoder(
        slices,
        lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, numthreads=1),
        imagecodecs.jpeg2k_decode,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ojph = bench_ojph(slices, Path(tmp), ".pgm")
        ojph_signed = bench_ojph(slices, Path(tmp), ".yuv")
    pipeline_ratio = statistics.median(pipeline) / statistics.median(bare)
    size_ratio = size_pipeline / size_j2k
    return {
        "setup": {
            "slices": count,
            "shape": [SIZE, SIZE],
            "dtype": "int16 (HU + 1024, Rescale Intercept -1024)",
            "noise_sigma_hu": NOISE_HU,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "imagecodecs": imagecodecs.__version__,
            "openjph_in_imagecodecs": imagecodecs.htj2k_version(),
            "openjph_tools": ojph_version(),
            "htj2k_options": {k: str(v) for k, v in HTJ2K_ENCODE_OPTIONS.items()},
        },
        "per_frame": {
            "a_pipeline": summary(pipeline),
            "a_pipeline_multiframe": {
                "frames": multiframe["frames"],
                **summary(multiframe["pipeline"]),
                "bare_encode_same_frames": summary(multiframe["bare"]),
            },
            "b_htj2k_encode_bare": summary(bare),
            "c_ojph_compress": {k: v for k, v in ojph.items() if k != "size_bytes"},
            "c_ojph_compress_signed_raw": {
                k: v for k, v in ojph_signed.items() if k != "size_bytes"
            },
            "d_j2k_lossless_openjpeg": summary(j2k),
        },
        "size_bytes": {
            "raw": raw,
            "htj2k": size_pipeline,
            "htj2k_bare": timed["size_bare"],
            "ojph_compress": ojph["size_bytes"],
            "ojph_compress_signed_raw": ojph_signed["size_bytes"],
            "j2k_lossless": size_j2k,
        },
        "compression_ratio": {
            "htj2k": round(raw / size_pipeline, 3),
            "ojph_compress": round(raw / ojph["size_bytes"], 3),
            "ojph_compress_signed_raw": round(raw / ojph_signed["size_bytes"], 3),
            "j2k_lossless": round(raw / size_j2k, 3),
        },
        "ratios": {
            "pipeline_over_bare_encode": round(pipeline_ratio, 3),
            "multiframe_pipeline_over_bare_encode": round(
                statistics.median(multiframe["pipeline"]) / statistics.median(multiframe["bare"]),
                3,
            ),
            "size_htj2k_over_j2k": round(size_ratio, 4),
        },
        "goals": {
            "pipeline_within_2x_bare_encode": pipeline_ratio <= PIPELINE_GOAL,
            "htj2k_size_within_6pct_of_j2k": size_ratio <= SIZE_GOAL,
        },
        "real_images_size_bytes": real_image_sizes(),
    }


def print_table(results: dict) -> None:
    """Print the results for a human."""
    setup, per_frame, sizes = results["setup"], results["per_frame"], results["size_bytes"]
    ojph, ojph_signed = per_frame["c_ojph_compress"], per_frame["c_ojph_compress_signed_raw"]
    multiframe = per_frame["a_pipeline_multiframe"]
    print(f"{setup['slices']} slices 512x512 int16, {setup['cpus']} CPUs")
    print(f"{'per frame':52s} {'median ms':>10s} {'p95 ms':>10s}")
    rows = [
        ("(a) pipeline transcode_to_htj2k, 1 slice/dataset", per_frame["a_pipeline"]),
        (f"(a) pipeline, {multiframe['frames']}-frame dataset", multiframe),
        ("(b) imagecodecs.htj2k_encode (bare)", per_frame["b_htj2k_encode_bare"]),
        ("(c) ojph_compress PGM, time it reports", ojph["reported_by_tool"]),
        ("(c) ojph_compress PGM, wall - start-up", ojph["wall_minus_startup"]),
        ("(c) ojph_compress PGM, wall per invocation", ojph["wall_per_invocation"]),
        ("(c) ojph_compress signed raw, time it reports", ojph_signed["reported_by_tool"]),
        ("(d) J2K lossless, OpenJPEG 1 thread", per_frame["d_j2k_lossless_openjpeg"]),
    ]
    for name, row in rows:
        print(f"{name:52s} {row['median_ms']:10.2f} {row['p95_ms']:10.2f}")
    print(
        f"ojph_compress {setup['openjph_tools']}: start-up (8x8 image) {ojph['startup_ms']:.2f} ms"
    )
    print(f"{'size':52s} {'bytes/frame':>10s} {'ratio':>10s}")
    for key in ("htj2k", "ojph_compress", "ojph_compress_signed_raw", "j2k_lossless"):
        print(f"{key:52s} {sizes[key] / setup['slices']:10.0f} {sizes['raw'] / sizes[key]:10.3f}")
    ratios, goals = results["ratios"], results["goals"]
    met = {True: "met", False: "MISSED"}
    print(
        f"pipeline / bare encode = {ratios['pipeline_over_bare_encode']:.3f} (goal <= 2): "
        f"{met[goals['pipeline_within_2x_bare_encode']]}; multi-frame "
        f"{ratios['multiframe_pipeline_over_bare_encode']:.3f}"
    )
    print(
        f"size HTJ2K / J2K = {ratios['size_htj2k_over_j2k']:.4f} (goal <= 1.06): "
        f"{met[goals['htj2k_size_within_6pct_of_j2k']]}"
    )
    for row in results["real_images_size_bytes"]:
        print(f"real {row['file']:36s} HTJ2K {row['htj2k']:8d} J2K {row['j2k']:8d} {row['ratio']}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON file and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/codec.json"))
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    if args.slices < 1:
        parser.error("--slices must be at least 1")
    results = run(args.slices)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
