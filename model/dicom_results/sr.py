"""The score as a DICOM Comprehensive 3D SR holding a TID 1500 Measurement Report.

One TID 1501 measurement group over the whole source image: the calibrated score, the raw score and
the threshold as numeric measurements, the decision as a qualitative evaluation, the model as the
algorithm (TID 4019) and as the device observer (TID 1004). The report-level qualitative evaluations
(TID 1500 row 12) carry the "not for diagnostic use" text, and the document stays UNVERIFIED: no
physician has signed it.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset

from model.runtime import ScoreResult

from . import codes, uids
from .identity import DISCLAIMER, NOT_FOR_DIAGNOSTIC_USE, SOFTWARE, ModelInfo

KIND = "sr"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "SQUID anomaly score (not for diagnostic use)"
TRACKING_LABEL = "SQUID anomaly score"


def algorithm(model: ModelInfo, threshold: float) -> AlgorithmIdentification:
    """TID 4019: the model by name and version, its weights and the threshold as parameters."""
    rule = f" ({model.threshold_rule})" if model.threshold_rule else ""
    return AlgorithmIdentification(
        name=model.name,
        version=model.version,
        manufacturer=SOFTWARE,
        parameters=[f"weights sha256 {model.weights_sha256}", f"threshold {threshold:.6f}{rule}"],
    )


def measurement_group(
    source: Dataset, result: ScoreResult, model: ModelInfo
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 over the whole source image."""
    measurements = [
        Measurement(name=name, value=value, unit=codes.NO_UNITS)
        for name, value in (
            (codes.ANOMALY_SCORE, result.score),
            (codes.RAW_SCORE, result.raw_score),
            (codes.THRESHOLD, result.threshold),
        )
    ]
    decision = QualitativeEvaluation(
        name=codes.DECISION, value=codes.ABNORMAL if result.is_anomalous else codes.NORMAL
    )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(str(source.SOPInstanceUID), model.version), identifier=TRACKING_LABEL
        ),
        algorithm_id=algorithm(model, result.threshold),  # TID 1501 row 9: for every item of the group
        measurements=measurements,
        qualitative_evaluations=[decision],
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
    )


def disclaimer() -> ContainerContentItem:
    """TID 1500 row 12: a Qualitative Evaluations container holding the intended-use text."""
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=codes.COMMENT,
                value=f"{NOT_FOR_DIAGNOSTIC_USE}. {DISCLAIMER}",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


def measurement_report(source: Dataset, result: ScoreResult, model: ModelInfo) -> MeasurementReport:
    observer = ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(model.name, model.version, model.weights_sha256),
            name=model.name,
            manufacturer_name=SOFTWARE,
            model_name=f"{model.name} {model.version}"[:64],
            serial_number=model.serial,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=[measurement_group(source, result, model)],
    )
    report[0].ContentSequence.append(disclaimer())
    return report


def build_sr(source: Dataset, result: ScoreResult, model: ModelInfo) -> Comprehensive3DSR:
    """The SR of one scored image. ``source`` must hold the UIDs and Type 2 patient/study attributes
    (see :func:`model.dicom_results.source.reference`)."""
    return Comprehensive3DSR(
        evidence=[source],
        content=measurement_report(source, result, model)[0],
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=codes.SCHEME, name=codes.SCHEME_NAME, responsible_organization=SOFTWARE
            )
        ],
        **model.object_attributes(str(source.SOPInstanceUID), KIND, SERIES_NUMBER, SERIES_DESCRIPTION),
    )
