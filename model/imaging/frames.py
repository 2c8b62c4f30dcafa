"""Decode the first frame of a DICOM's pixel data, at a reduced resolution where the codec allows.

Decoders are tried in a fixed order, each declining what it does not handle or failing with a
message; the first that succeeds wins:

1. **Codec reduction** (``min_side`` set): JPEG 2000 one resolution level down (Pillow's
   ``reduce``: the wavelet's own low-pass, no full-size image ever exists; :data:`MAX_J2K_STEPS`)
   and 8-bit JPEG with DCT scaling (Pillow's ``draft``), for single-sample unsigned images; a box
   reduction may follow.
2. **Native data as a view**: uncompressed little-endian 8/16-bit single-sample pixels are read in
   place from the Pixel Data bytes, no copy.
3. **imagecodecs**: libjpeg-turbo 3 (JPEG baseline, extended 12-bit and lossless), CharLS
   (JPEG-LS), OpenJPEG (JPEG 2000) and PackBits (the segments of DICOM RLE, written straight into
   the image's bytes: pydicom's RLE path peaks at 8 bytes a pixel, this one at 3) for single-sample
   unsigned images. These release the GIL, so a thread pool decodes on every core
   (:func:`model.steps.in_threads`), and libjpeg-turbo reads the WG04 12-bit lossy JPEGs that
   pydicom's plugins refuse.
4. **pydicom's plugins** (pylibjpeg, pyjpegls, Pillow, RLE, numpy), one after the other:
   everything else (colour, signed, big endian, odd bit depths). pydicom's own GDCM plugins are
   removed when this module is imported: GDCM can abort the process it runs in.
5. **GDCM**, in a child process with a memory limit (:mod:`model.imaging.gdcm_fallback`): only for
   compressed data every decoder above refused.

Before any decoder runs, the codestream's own declared size must match Rows, Columns and Samples
per Pixel (:mod:`model.imaging.codestream`), so a header that lies about a 16000 px codestream is
refused, not decoded. All failing is one log line and an ``undecodable`` rejection that lists
what each decoder said (scrubbed of identifier values); pydicom's per-plugin tracebacks are
dropped, as that list already carries their messages.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from . import gdcm_fallback
from .codestream import CodestreamError, Declared, declared_j2k, declared_jpeg
from .errors import ImageRejected, Reason
from .privacy import Scrubber
from .reduce import power_of_two_steps

log = logging.getLogger(__name__)

JPEG_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1})
JPEG_LS_SYNTAXES = frozenset({JPEGLSLossless, JPEGLSNearLossless})
J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
# JPEG 2000 Part 2: no pydicom decoder; GDCM reads them. Their codestreams are checked all the same.
J2K_PART2_SYNTAXES = frozenset({JPEG2000MCLossless, JPEG2000MC})
NATIVE_VIEW_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
# DCT scaling goes down to 1/8. JPEG 2000 goes one resolution level down at most: its low-pass
# aliases more than a box does, and at level 2 (2048 -> 512 px) calibrated scores moved by up to
# 0.015 against a full decode, at level 1 (then boxes of 2) by 0.002 (bench/decode_fidelity.py).
MAX_DCT_STEPS = 3
MAX_J2K_STEPS = 1
DETAIL_LIMIT = 300
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian

# pydicom logs a traceback for every plugin that fails before it raises with all their messages,
# which become the rejection's detail: the tracebacks would only reach a user's terminal.
logging.getLogger("pydicom.pixels.decoders.base").addFilter(lambda record: False)
gdcm_fallback.keep_out_of_process()


@dataclass(frozen=True)
class StoredFrame:
    """Stored pixel values (before any LUT) of the first frame, ``step`` times smaller a side than
    the image (1 unless the codec reduced it), and the decoder that made them."""

    pixels: NDArray[Any]
    step: int
    decoder: str


@dataclass(frozen=True)
class _Frame:
    data: bytes
    ds: Dataset
    syntax: UID
    rows: int
    columns: int
    samples: int
    min_side: int | None
    encoded: bytes | memoryview | None
    declared: Declared | None

    @property
    def simple(self) -> bool:
        """One unsigned sample of at most 16 bits: what the fast decoders handle exactly."""
        bits = int(self.ds.get("BitsAllocated") or 0)
        return self.samples == 1 and int(self.ds.get("PixelRepresentation") or 0) == 0 and bits in (8, 16)


Decoder = Callable[[_Frame], StoredFrame | None]


def decode_first_frame(
    data: bytes, ds: Dataset, syntax: UID, *, min_side: int | None, scrub: Scrubber
) -> StoredFrame:
    """The first frame's stored values of the DICOM file ``data`` (parsed: ``ds``), reduced by the
    codec where it can, keeping at least ``min_side`` pixels on the shorter side (``None``: the
    codec decodes in full; a box reduction may still follow, :mod:`model.imaging.dicom`)."""
    frame = _frame(data, ds, syntax, min_side)
    failures: list[str] = []
    for name, decoder in _DECODERS:
        try:
            decoded = decoder(frame)
        except Exception as exc:
            failures.append(f"{name}: {_message(exc, scrub)}")
            continue
        if decoded is not None:
            _check_shape(decoded, frame)
            if failures:
                log.info("pixel data decoded by %s after: %s", name, "; ".join(failures))
            return decoded
    label = syntax_label(syntax)
    summary = "; ".join(failures) or "no decoder handles it"
    log.warning("pixel data could not be decoded (transfer syntax %s): %s", label, summary)
    raise ImageRejected(
        Reason.UNDECODABLE,
        f"pixel data could not be decoded with transfer syntax {label}: {summary}"[: DETAIL_LIMIT * 2],
    )


def _frame(data: bytes, ds: Dataset, syntax: UID, min_side: int | None) -> _Frame:
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel") or 1)
    encoded: bytes | memoryview | None = None
    declared: Declared | None = None
    if syntax.is_encapsulated and "PixelData" in ds:
        encoded = _first_fragment_frame(data, ds, syntax)
        declared = _declared(encoded, syntax)
        if declared is not None and (declared.rows, declared.columns, declared.components) != (
            rows,
            columns,
            samples,
        ):
            raise ImageRejected(
                Reason.UNDECODABLE,
                f"the {declared.codec} codestream declares {declared.describe()} but the header says "
                f"{columns}x{rows}x{samples}: refused before decoding (transfer syntax "
                f"{syntax_label(syntax)})",
            )
    return _Frame(data, ds, syntax, rows, columns, samples, min_side, encoded, declared)


def pixel_data(data: bytes, ds: Dataset) -> bytes | memoryview:
    """Pixel Data as a view into the file's bytes where its value was left there (deferred by the
    parser, and not inside a deflated body), else the dataset's value."""
    element = ds.get_item("PixelData", keep_deferred=True)
    tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    if element is None or element.value is not None or tell is None or length is None or deflated:
        return ds.PixelData
    end = len(data) if length == UNDEFINED_LENGTH else tell + length
    return memoryview(data)[tell:end]


def _first_fragment_frame(data: bytes, ds: Dataset, syntax: UID) -> bytes | memoryview:
    """The first frame's codestream: a view into the file's bytes when it is one fragment (the
    common single-frame case, no copy of the compressed bytes), else pydicom's copy of its
    fragments."""
    if int(ds.get("NumberOfFrames") or 1) == 1:
        view = _single_fragment(pixel_data(data, ds))
        if view is not None:
            return view
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(
            ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames") or 1), extended_offsets=extended
        )
    except Exception as exc:
        raise ImageRejected(
            Reason.UNDECODABLE,
            f"encapsulated pixel data could not be split into frames ({type(exc).__name__}), "
            f"transfer syntax {syntax_label(syntax)}",
        ) from None


def _single_fragment(value: bytes | memoryview) -> memoryview | None:
    """The fragment after the Basic Offset Table item when it is the only one, else None."""
    if len(value) < 16 or bytes(value[:4]) != ITEM_TAG:
        return None
    start = 8 + struct.unpack_from("<I", value, 4)[0]
    if bytes(value[start : start + 4]) != ITEM_TAG:
        return None
    end = start + 8 + struct.unpack_from("<I", value, start + 4)[0]
    if end > len(value) or bytes(value[end : end + 4]) == ITEM_TAG:
        return None
    return memoryview(value)[start + 8 : end]


def _declared(encoded: bytes | memoryview, syntax: UID) -> Declared | None:
    try:
        if syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
            return declared_jpeg(encoded)
        if syntax in J2K_SYNTAXES or syntax in J2K_PART2_SYNTAXES:
            return declared_j2k(encoded)
    except CodestreamError as exc:
        raise ImageRejected(Reason.UNDECODABLE, f"{exc} (transfer syntax {syntax_label(syntax)})") from None
    return None


# --- the decoders, in the order they are tried ------------------------------------------------


def _j2k_reduced(frame: _Frame) -> StoredFrame | None:
    declared = frame.declared
    if frame.syntax not in J2K_SYNTAXES or declared is None or not frame.simple or declared.signed:
        return None
    if not 8 <= declared.precision <= 16 or declared.components != 1:
        return None
    steps = power_of_two_steps(frame.rows, frame.columns, frame.min_side, min(MAX_J2K_STEPS, declared.levels))
    if steps == 0:
        return None
    with Image.open(BytesIO(_encoded(frame)), formats=["JPEG2000"]) as image:
        image.reduce = steps  # type: ignore[method-assign,assignment]  # Pillow: a property on JPEG 2000
        image.load()
        pixels = np.asarray(image)
    if pixels.dtype == np.uint16 and declared.precision < 16:  # Pillow scales samples up to 16 bits
        pixels = pixels >> (16 - declared.precision)
    return StoredFrame(pixels, 1 << steps, "pillow-jpeg2000-reduced")


def _jpeg_reduced(frame: _Frame) -> StoredFrame | None:
    declared = frame.declared
    if frame.syntax not in (JPEGBaseline8Bit, JPEGExtended12Bit) or declared is None or not frame.simple:
        return None
    if declared.precision != 8 or declared.components != 1:
        return None
    steps = power_of_two_steps(frame.rows, frame.columns, frame.min_side, MAX_DCT_STEPS)
    if steps == 0:
        return None
    size = (-(-frame.columns // (1 << steps)), -(-frame.rows // (1 << steps)))
    with Image.open(BytesIO(_encoded(frame)), formats=["JPEG"]) as image:
        image.draft("L", size)
        image.load()
        pixels = np.asarray(image.convert("L") if image.mode != "L" else image)
    step = round(frame.columns / pixels.shape[1])
    return StoredFrame(pixels, step, "pillow-jpeg-dct-scaled")


def _native_view(frame: _Frame) -> StoredFrame | None:
    """Uncompressed pixels as a read-only view of the Pixel Data bytes (unused high bits must be
    clear: otherwise pydicom masks them on a copy)."""
    ds = frame.ds
    if frame.syntax not in NATIVE_VIEW_SYNTAXES or not frame.simple or "PixelData" not in ds:
        return None
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    high_bit = ds.get("HighBit")
    if high_bit not in (None, "") and int(high_bit) != bits_stored - 1:
        return None
    dtype = np.dtype("<u2" if bits_allocated == 16 else "u1")
    count = frame.rows * frame.columns
    value = pixel_data(frame.data, ds)
    if len(value) < count * dtype.itemsize:
        raise ValueError(f"pixel data holds {len(value)} bytes, the header needs {count * dtype.itemsize}")
    pixels = np.frombuffer(value, dtype=dtype, count=count).reshape(frame.rows, frame.columns)
    if bits_stored < bits_allocated and int(pixels.max()) >> bits_stored:
        return None
    return StoredFrame(pixels, 1, "numpy-view")


def _imagecodecs(frame: _Frame) -> StoredFrame | None:
    if not frame.simple or frame.encoded is None:
        return None
    if frame.syntax in JPEG_SYNTAXES:
        pixels = imagecodecs.jpeg8_decode(_buffer(frame.encoded))
    elif frame.syntax in JPEG_LS_SYNTAXES:
        pixels = imagecodecs.jpegls_decode(_buffer(frame.encoded))
    elif frame.syntax in J2K_SYNTAXES and frame.declared is not None and not frame.declared.signed:
        pixels = imagecodecs.jpeg2k_decode(_buffer(frame.encoded), numthreads=1)
    elif frame.syntax == RLELossless:
        return _rle(frame, frame.encoded)
    else:
        return None
    return StoredFrame(np.asarray(pixels), 1, "imagecodecs")


def _rle(frame: _Frame, encoded: bytes | memoryview) -> StoredFrame | None:
    """DICOM RLE (PS3.5 G): a 64-byte header of segment offsets, one PackBits segment per byte of
    the sample, most significant first; each decoded segment goes straight into its byte lane."""
    sample_bytes = int(frame.ds.BitsAllocated) // 8
    header = np.frombuffer(encoded[:64], dtype="<u4")
    if len(header) < 16 or int(header[0]) != sample_bytes:
        return None
    ends = [int(offset) for offset in header[1 : 1 + sample_bytes]] + [len(encoded)]
    count = frame.rows * frame.columns
    pixels = np.empty(count, dtype=np.dtype("<u2") if sample_bytes == 2 else np.uint8)
    lanes = pixels.view(np.uint8).reshape(count, sample_bytes)
    view = memoryview(encoded)  # segments are decoded from slices of it, not copies
    for segment in range(sample_bytes):
        plane = imagecodecs.packbits_decode(_buffer(view[ends[segment] : ends[segment + 1]]))
        if len(plane) < count:
            raise ValueError(f"RLE segment {segment} holds {len(plane)} bytes, the image {count} pixels")
        lanes[:, sample_bytes - 1 - segment] = np.frombuffer(plane, dtype=np.uint8, count=count)
    bits_stored = int(frame.ds.get("BitsStored") or 8 * sample_bytes)
    if bits_stored < 8 * sample_bytes and int(pixels.max()) >> bits_stored:
        return None  # unused high bits set: pydicom masks them
    return StoredFrame(pixels.reshape(frame.rows, frame.columns), 1, "imagecodecs-rle")


def _pydicom(frame: _Frame) -> StoredFrame | None:
    failures: list[str] = []
    for plugin in _pydicom_plugins(frame.syntax):
        try:
            return StoredFrame(pixel_array(frame.ds, index=0, decoding_plugin=plugin), 1, plugin or "pydicom")
        except Exception as exc:
            failures.append(f"{plugin or 'pydicom'}: {' '.join(str(exc).split())}")
    raise RuntimeError("; ".join(failures) or "no pydicom plugin for this transfer syntax")


def _gdcm(frame: _Frame) -> StoredFrame | None:
    if frame.encoded is None or not gdcm_fallback.available():
        return None
    sample_bytes = max(1, int(frame.ds.get("BitsAllocated") or 16) // 8)
    pixels = gdcm_fallback.decode(frame.data, frame.rows, frame.columns, frame.samples, sample_bytes)
    return StoredFrame(pixels, 1, "gdcm")


_DECODERS: tuple[tuple[str, Decoder], ...] = (
    ("pillow-jpeg2000-reduced", _j2k_reduced),
    ("pillow-jpeg-dct-scaled", _jpeg_reduced),
    ("numpy-view", _native_view),
    ("imagecodecs", _imagecodecs),
    ("pydicom", _pydicom),
    ("gdcm", _gdcm),
)


def _pydicom_plugins(syntax: UID) -> list[str]:
    """pydicom's plugins for ``syntax`` in its own order (GDCM is not among them:
    :func:`gdcm_fallback.keep_out_of_process`); ``""`` lets pydicom pick for native data."""
    try:
        plugins = list(get_decoder(syntax).available_plugins)
    except NotImplementedError:
        return [""]
    return plugins or ([""] if not syntax.is_encapsulated else [])


def _buffer(view: bytes | memoryview) -> bytes:
    """``view`` for imagecodecs, which reads any buffer without a copy (its stubs say bytes)."""
    return cast(bytes, view)


def _encoded(frame: _Frame) -> bytes | memoryview:
    if frame.encoded is None:
        raise ValueError("no encapsulated frame")
    return frame.encoded


def _check_shape(decoded: StoredFrame, frame: _Frame) -> None:
    """A decoder's output must be the image the header describes (reduced: within a pixel)."""
    pixels = decoded.pixels
    expected = (-(-frame.rows // decoded.step), -(-frame.columns // decoded.step))
    slack = 1 if decoded.step > 1 else 0  # image offsets on the reference grid round either way
    close = all(abs(got - want) <= slack for got, want in zip(pixels.shape[:2], expected, strict=True))
    if not close or (pixels.ndim == 3) != (frame.samples > 1):
        raise ImageRejected(
            Reason.UNDECODABLE,
            f"{decoded.decoder} decoded {pixels.shape} where the header describes "
            f"{frame.rows}x{frame.columns}x{frame.samples}",
        )


def _message(exc: Exception, scrub: Scrubber) -> str:
    text = scrub(" ".join(str(exc).split()))[:DETAIL_LIMIT]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def syntax_label(syntax: UID) -> str:
    """A transfer syntax as people read it: its name and its UID."""
    return f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
