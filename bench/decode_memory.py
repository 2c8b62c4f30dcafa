"""Peak memory of decoding + preprocessing one image, per pixel, by image kind and size.

Usage: python bench/decode_memory.py [--sizes 2000 7000] [--out bench/results/decode_memory.json]
Each measurement runs in a fresh process that first reads the file into memory, then decodes and
preprocesses it exactly as the service does (``model.steps.prepare`` for the shipped model's 128 px
input: a reduced decode), and once more at full resolution (``full_resolution=True``); the growth of
the process's peak resident size (``VmHWM``, reset through ``/proc/self/clear_refs`` just before,
Linux only) over its size before, divided by the image's pixel count, is the bytes-per-pixel figure.
The heatmap overlay and the preview are measured too (``service.payload``). Images are written once,
in this process, so their creation does not count. :func:`measure` is also used by
``bench/batch_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import sys, json
from pathlib import Path
def peak_kb():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
def rss_kb():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])
data = Path(sys.argv[1]).read_bytes()
from model.preprocess import Preprocessing
from model.steps import prepare
from service.payload import preview_png
from model.heatmap import overlay_png
import numpy as np
before = rss_kb()
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the current size
item = prepare(data, Preprocessing(128, "equalize"), 200_000_000, full_resolution=sys.argv[2] == "full")
decoded = peak_kb()
overlay_png(item.decoded.pixels, np.zeros((224, 224), np.float32))
preview_png(item.decoded.pixels)
after = peak_kb()
print(json.dumps({"before_kb": before, "decoded_kb": decoded, "after_kb": after}))
"""


def make_image(kind: str, side: int, folder: Path) -> Path:
    ramp = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
    path = folder / f"{kind}-{side}.{'dcm' if kind.startswith('dicom') else 'png'}"
    if kind == "png_rgb":
        gray8 = (ramp >> 4).astype(np.uint8)
        Image.fromarray(np.stack([gray8, gray8 // 2, gray8], axis=-1)).save(path, compress_level=1)
    elif kind == "png_gray16":
        Image.fromarray(ramp).save(path, compress_level=1)
    elif kind == "dicom_rle":
        path.write_bytes(_rle_dicom(ramp))
    return path


def _rle_dicom(pixels: np.ndarray) -> bytes:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measure(path: Path, full_resolution: bool = False) -> dict[str, float]:
    """Peak memory (kB) of one decode of ``path`` in a fresh process: before, decoded, after drawing."""
    mode = "full" if full_resolution else "reduced"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bytes_per_pixel(peak: dict[str, float], pixels: int, key: str = "decoded_kb") -> float:
    return round((peak[key] - peak["before_kb"]) * 1024 / pixels, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 7000])
    parser.add_argument("--kinds", nargs="+", default=["png_rgb", "png_gray16", "dicom_rle"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode_memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.kinds:
            for side in args.sizes:
                path = make_image(kind, side, Path(scratch))
                peak, full = measure(path), measure(path, full_resolution=True)
                pixels = side * side
                rows.append(
                    {
                        "kind": kind,
                        "side": side,
                        "file_bytes": path.stat().st_size,
                        "decode_bytes_per_pixel": bytes_per_pixel(peak, pixels),
                        "with_overlay_bytes_per_pixel": bytes_per_pixel(peak, pixels, "after_kb"),
                        "full_resolution_decode_bytes_per_pixel": bytes_per_pixel(full, pixels),
                        "full_resolution_with_overlay_bytes_per_pixel": bytes_per_pixel(
                            full, pixels, "after_kb"
                        ),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                path.unlink()
    report = {"machine": platform.platform(), "python": platform.python_version(), "results": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
