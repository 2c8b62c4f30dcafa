"""Tell DICOM, PNG and JPEG apart by content, never by file name.

Uploads arrive with arbitrary names (``image``, ``blob``, ``x.dcm`` holding a PNG...), so only the
bytes count. Besides Part 10 files ('DICM' after a 128-byte preamble) we accept bare datasets
without preamble or File Meta (old ACR-NEMA style exports such as the fo-dicom chest): those must
start with a plausible run of little-endian elements of group 0x0002 or 0x0008.
"""

from __future__ import annotations

import struct

from .result import ImageFormat

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT UV".split())
_MAX_ELEMENTS = 24
_ELEMENTS_IN_GROUP_8 = 2
_UNDEFINED_LENGTH = 0xFFFFFFFF


def detect_format(data: bytes) -> ImageFormat | None:
    """``"dicom"``, ``"png"``, ``"jpeg"``, or ``None`` when the content is none of them."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if looks_like_bare_dicom(data):
        return "dicom"
    return None


def looks_like_bare_dicom(data: bytes) -> bool:
    """Whether ``data`` opens with ascending, well-formed little-endian DICOM elements.

    Walks the first elements (implicit or explicit VR, decided per element: group 0x0002 is always
    explicit) until two elements of group 0x0008 were seen, requiring tags to increase strictly
    and every length to stay inside the buffer. Random or text bytes fail within one or two
    elements.
    """
    if len(data) < 8 or struct.unpack_from("<H", data, 0)[0] not in (0x0002, 0x0008):
        return False
    offset, last_tag, seen, in_group_8 = 0, -1, 0, 0
    while seen < _MAX_ELEMENTS and offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        tag = (group << 16) | element
        if tag <= last_tag:
            return False
        vr = data[offset + 4 : offset + 6]
        if group == 0x0002 or vr in _VRS:
            if vr not in _VRS:
                return False
            if vr in _LONG_VRS:
                if offset + 12 > len(data):
                    return False
                length, header = struct.unpack_from("<I", data, offset + 8)[0], 12
            else:
                length, header = struct.unpack_from("<H", data, offset + 6)[0], 8
        else:
            length, header = struct.unpack_from("<I", data, offset + 4)[0], 8
        seen += 1
        in_group_8 += group == 0x0008
        if length == _UNDEFINED_LENGTH or in_group_8 >= _ELEMENTS_IN_GROUP_8:
            break
        offset += header + length
        if offset > len(data):
            return False
        last_tag = tag
    return in_group_8 >= 1 and seen >= 2
