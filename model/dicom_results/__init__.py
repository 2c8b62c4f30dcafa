"""DICOM results a PACS can file: a TID 1500 measurement report (SR) and a secondary capture (SC).

Both objects join the source image's study (patient and study modules copied: the one place this
software writes patient identifiers) in a series of their own, with UIDs derived from the source
SOP Instance UID, the model version and the object kind, so a re-run replaces its earlier results.
Torch-free and service-free: the CLI, the HTTP API, batch jobs and a DICOM node share it.
"""

from .build import (
    KINDS,
    Kind,
    ResultObject,
    build_for_upload,
    build_objects,
    require_dicom,
    write_for_upload,
)
from .errors import NotBuilt, Skip
from .identity import ModelInfo
from .sc import anomaly_map, build_sc
from .source import read_source, reference
from .sr import build_sr
from .writer import MEDIA_TYPE, to_bytes, write_file

__all__ = [
    "KINDS",
    "MEDIA_TYPE",
    "Kind",
    "ModelInfo",
    "NotBuilt",
    "ResultObject",
    "Skip",
    "anomaly_map",
    "build_for_upload",
    "build_objects",
    "build_sc",
    "build_sr",
    "read_source",
    "reference",
    "require_dicom",
    "to_bytes",
    "write_file",
    "write_for_upload",
]
