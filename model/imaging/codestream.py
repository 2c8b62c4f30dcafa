"""The size a compressed frame declares for itself, read from its own markers without decoding.

A DICOM header can say 224x224 while the codestream inside says 16000x16000; decoders size their
output from the codestream, so such a file decodes to gigabytes (issue 25, defect 1). Comparing
the codestream's own declaration with Rows/Columns before any decoder runs turns that into a
refusal that costs a few hundred bytes of parsing.

Markers read (ISO/IEC 10918-1 B.2.2, 14495-1 C.2.2, 15444-1 A.5.1):

* JPEG (baseline, extended, progressive, lossless): the first SOFn segment (0xFFC0-0xFFCF except
  DHT 0xFFC4, JPG 0xFFC8, DAC 0xFFCC): precision, lines, samples per line, components.
* JPEG-LS: the SOF55 segment (0xFFF7), same layout.
* JPEG 2000 and HTJ2K: the SIZ segment (0xFF51) after SOC: the image area is Xsiz-XOsiz by
  Ysiz-YOsiz, Csiz components, precision and sign from the first component's Ssiz. A JP2 file
  wrapper (not allowed in DICOM, seen in the wild) is looked through.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

JPEG_SOI = b"\xff\xd8"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# Markers that are not SOF although they sit in the 0xC0-0xCF range.
_NOT_SOF = frozenset({0xC4, 0xC8, 0xCC})
_JPEG_LS_SOF = 0xF7
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_SOS = 0xDA
_J2K_COD, _J2K_SOT = 0x52, 0x90
# A JP2 header is a few boxes; the codestream starts within this many bytes in real files.
_JP2_SEARCH = 4096


@dataclass(frozen=True)
class Declared:
    """What a codestream says it holds."""

    codec: str
    rows: int
    columns: int
    components: int
    precision: int
    signed: bool = False
    # JPEG 2000: wavelet decomposition levels of the main header's COD (how far it can be reduced).
    levels: int = 0

    def describe(self) -> str:
        return f"{self.columns}x{self.rows}x{self.components} ({self.precision}-bit)"


class CodestreamError(ValueError):
    """The frame does not start like the codestream its transfer syntax names."""


def declared_jpeg(frame: bytes | memoryview) -> Declared:
    """The SOFn (or JPEG-LS SOF55) of a JPEG-family codestream."""
    if bytes(frame[:2]) != JPEG_SOI:
        raise CodestreamError("the frame does not start with a JPEG SOI marker")
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            raise CodestreamError(f"no JPEG marker where one was expected (byte {offset})")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        is_sof = 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF
        if is_sof or marker == _JPEG_LS_SOF:
            if offset + 10 > len(frame) or length < 8:
                raise CodestreamError("the JPEG frame header is cut short")
            precision, rows, columns, components = struct.unpack_from(">BHHB", frame, offset + 4)
            codec = "JPEG-LS" if marker == _JPEG_LS_SOF else "JPEG"
            return Declared(codec, rows, columns, components, precision)
        if marker == _SOS or length < 2:
            break
        offset += 2 + length
    raise CodestreamError("no JPEG frame header (SOF) before the scan data")


def declared_j2k(frame: bytes | memoryview) -> Declared:
    """The SIZ segment of a JPEG 2000 (or HTJ2K) codestream, inside a JP2 wrapper or bare."""
    start = 0 if bytes(frame[:4]) == J2K_SOC_SIZ else -1
    if start < 0 and bytes(frame[: len(JP2_SIGNATURE)]) == JP2_SIGNATURE:
        start = bytes(frame[:_JP2_SEARCH]).find(J2K_SOC_SIZ)
    if start < 0:
        raise CodestreamError("the frame does not start with a JPEG 2000 SOC/SIZ marker pair")
    siz = start + 4
    if siz + 40 > len(frame):
        raise CodestreamError("the JPEG 2000 SIZ segment is cut short")
    _length, _caps, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", frame, siz)
    (components,) = struct.unpack_from(">H", frame, siz + 36)
    if components < 1 or siz + 38 + 3 > len(frame):
        raise CodestreamError("the JPEG 2000 SIZ segment declares no component")
    ssiz = frame[siz + 38]
    if xsiz <= xosiz or ysiz <= yosiz:
        raise CodestreamError("the JPEG 2000 SIZ segment declares an empty image")
    precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
    levels = _decomposition_levels(frame, siz + _length)
    return Declared("JPEG 2000", ysiz - yosiz, xsiz - xosiz, components, precision, signed, levels)


def _decomposition_levels(frame: bytes | memoryview, offset: int) -> int:
    """SPcod's decomposition levels from the main header's COD segment (0 when there is none)."""
    while offset + 10 <= len(frame) and frame[offset] == 0xFF:
        marker = frame[offset + 1]
        if marker == _J2K_COD:
            return frame[offset + 9]  # marker, Lcod, Scod, SGcod (4 bytes), then SPcod's levels
        if marker == _J2K_SOT:
            break
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        offset += 2 + length
    return 0
