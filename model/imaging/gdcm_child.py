"""The child process of :mod:`model.imaging.gdcm_fallback`: one DICOM file's first frame through GDCM.

Run as ``python -I gdcm_child.py PATH ADDRESS_SPACE_BYTES``, standalone (it imports nothing from this
project). It caps its own address space first, so a hostile file can exhaust this process only, then
writes the first frame as an ``.npy`` array to stdout. GDCM and the IJG codecs inside it print their
complaints on stderr, which the parent reads and keeps off the user's terminal.
"""

from __future__ import annotations

import resource
import sys

SCALAR_TYPES = {"UINT8": "u1", "INT8": "i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4", "INT32": "<i4"}


def main() -> int:
    path, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import gdcm
    import numpy as np

    gdcm.Trace.DebugOff()
    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        print("GDCM could not read the file", file=sys.stderr)
        return 2
    image = reader.GetImage()
    pixel_format = image.GetPixelFormat()
    scalar = SCALAR_TYPES.get(pixel_format.GetScalarTypeAsString())
    if scalar is None:
        print(f"GDCM decoded {pixel_format.GetScalarTypeAsString()} samples", file=sys.stderr)
        return 3
    columns, rows = image.GetDimension(0), image.GetDimension(1)
    samples = pixel_format.GetSamplesPerPixel()
    buffer = image.GetBuffer()
    if buffer is None:
        print("GDCM could not decode the pixel data", file=sys.stderr)
        return 4
    raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
    count = rows * columns * samples
    pixels = np.frombuffer(raw, dtype=scalar, count=count)
    shape = (rows, columns, samples) if samples > 1 else (rows, columns)
    out = sys.stdout.buffer  # a pipe: np.save would ask it for a file position
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(pixels.reshape(shape)))
    out.write(pixels.data)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
