"""Every coded concept the SR uses, in one place.

DICOM has no standard concept for "anomaly score of an unsupervised detector", so the score, raw
score, threshold and decision names come from a private coding scheme (``99`` prefix, PS3.16 8)
that each SR declares in its Coding Scheme Identification Sequence. Values use standard codes where
they exist (SNOMED CT normal / abnormal, UCUM dimensionless unit).
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

SCHEME = "99SQUID"
SCHEME_NAME = "SQUID chest X-ray anomaly scoring"

ANOMALY_SCORE = CodedConcept("ANOMALY_SCORE", SCHEME, "Anomaly score (calibrated, 0-1)")
RAW_SCORE = CodedConcept("RAW_SCORE", SCHEME, "Raw discriminator score")
THRESHOLD = CodedConcept("THRESHOLD", SCHEME, "Anomaly score threshold")
DECISION = CodedConcept("DECISION", SCHEME, "Anomaly score at or above threshold")

NORMAL = CodedConcept.from_code(codes.SCT.Normal)
ABNORMAL = CodedConcept.from_code(codes.SCT.Abnormal)
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)
IMAGING_PROCEDURE = CodedConcept.from_code(codes.SCT.ImagingProcedure)
DEVICE_OBSERVER = CodedConcept.from_code(codes.cid270.Device)
PROCESSING_EQUIPMENT = CodedConcept.from_code(codes.DCM.ProcessingEquipment)
SOURCE_IMAGE_PURPOSE = CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
COMMENT = CodedConcept.from_code(codes.DCM.Comment)
# TID 1500 row 12: the report-level container of qualitative evaluations (CODE and TEXT items).
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
