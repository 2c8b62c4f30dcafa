"""Who made a result object: this software and the model, as PACS-visible equipment attributes.

Everything about the model comes from the artifact's metadata (never from settings), so an SR can
not name a model other than the one that produced its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import highdicom as hd

from model.artifact import ArtifactMetadata

from . import codes, uids

SOFTWARE = "squid-cxr"
MANUFACTURER = "squid-cxr (open source)"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
DISCLAIMER = (
    "Research output of an unsupervised anomaly detector (SQUID) trained on normal chest radiographs: "
    "the score says how unlike the training images this image is, not what is wrong with it. "
    "No physician has reviewed it."
)
LO = 64  # the longest Long String value (Manufacturer's Model Name, Software Versions...)


def software_version() -> str:
    """The installed package's version (what a PACS shows in Software Versions)."""
    try:
        return version(SOFTWARE)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ModelInfo:
    """The model facts a result object records: name, version and a digest of its weights."""

    name: str
    version: str
    weights_sha256: str
    threshold_rule: str = ""

    @classmethod
    def from_metadata(cls, meta: ArtifactMetadata) -> ModelInfo:
        return cls(meta.model_name, meta.model_version, meta.weights_sha256, meta.threshold_rule)

    @property
    def serial(self) -> str:
        """A Device Serial Number (LO, 64 chars) that changes whenever the weights do."""
        return self.weights_sha256[:16]

    def software_versions(self) -> list[str]:
        return [f"{SOFTWARE} {software_version()}"[:LO], f"{self.name} {self.version}"[:LO]]

    def equipment(self) -> hd.ContributingEquipment:
        """The Contributing Equipment item naming this software and model as processing equipment."""
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.name[:LO],
            software_versions=self.software_versions(),
            device_serial_number=self.serial,
            contribution_description=(
                f"SQUID anomaly scoring, model {self.name} {self.version}, weights sha256 "
                f"{self.weights_sha256}; {NOT_FOR_DIAGNOSTIC_USE.lower()}"
            )[:1024],
        )

    def object_attributes(
        self, source_sop_instance_uid: str, kind: str, series_number: int, series_description: str
    ) -> dict[str, Any]:
        """What the SR and SC constructors take alike: derived UIDs, numbering, series description,
        and the General and Contributing Equipment naming this software and model."""
        return {
            "series_instance_uid": uids.series_uid(source_sop_instance_uid, self.version, kind),
            "series_number": series_number,
            "sop_instance_uid": uids.instance_uid(source_sop_instance_uid, self.version, kind),
            "instance_number": 1,
            "series_description": series_description,
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.name[:LO],
            "software_versions": self.software_versions(),
            "device_serial_number": self.serial,
            "contributing_equipment": [self.equipment()],
        }
