"""All service and worker configuration: one pydantic-settings class, environment variables ``SQUID_*``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.domain import GatePolicy, ImageCheck
from model.imaging import DomainReason

AE_TITLE = r"^[ -~]{1,16}$"  # PS3.5 AE VR: up to 16 printable ASCII characters


class DicomDestination(BaseModel):
    """A DICOM node results are sent to by C-STORE (an entry of ``SQUID_DICOM_DESTINATIONS``)."""

    ae_title: str = Field(pattern=AE_TITLE)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @property
    def key(self) -> str:
        """Folder-safe name of this destination (its outbox and dead-letter folders, metric label).

        The port is left out so that moving a PACS to another port keeps its unsent results."""
        return "".join(
            c if c.isalnum() or c in "-_.@" else "_" for c in f"{self.ae_title.strip()}@{self.host}"
        )


class Settings(BaseSettings):
    """Every knob of the API and the workers, with the defaults documented in the README."""

    # Empty variables (compose's ``${VAR:-}``) mean "unset", never "" or ".".
    model_config = SettingsConfigDict(
        env_prefix="SQUID_", env_file=None, extra="ignore", env_ignore_empty=True
    )

    model_path: str | None = Field(None, description="Artifact path or http(s) URL; default: shipped model.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Override the artifact's threshold.")
    operating_point: str | None = Field(
        None,
        description="A named threshold of the artifact instead: `default`, `spec90` (0.90 specificity).",
    )
    providers: list[str] | None = Field(
        None, description="onnxruntime providers; default: CUDA if present, CPU."
    )
    intra_op_threads: int | None = Field(None, ge=1, description="onnxruntime threads per session.")
    api_key: str | None = Field(
        None,
        description="When set, required (X-API-Key, Bearer or Basic password) except on probes and metrics.",
    )
    max_upload_mb: float = Field(64.0, gt=0, description="Largest accepted request body.")
    max_pixels: int = Field(100_000_000, gt=0, description="Largest accepted decoded image (pixels).")
    decode_threads: int = Field(
        0,
        ge=0,
        description="Threads decoding images in each batch process and the DICOM node (0: cores, at most 4).",
    )
    decode_full_resolution: bool = Field(
        False,
        description="Decode at full resolution, not the model's (slower; scores move by <0.01).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes for `squid serve`.")
    max_batch: int = Field(16, ge=1, description="Micro-batching: most images per inference call.")
    max_wait_ms: float = Field(5.0, ge=0, description="Micro-batching: longest wait to fill a batch.")
    log_level: str = "INFO"
    # HTTP server limits (squid serve): see docs/deployment.md.
    max_header_kb: int = Field(32, ge=1, le=1024, description="Largest request head (KiB); over it: 431.")
    max_header_count: int = Field(100, ge=1, description="Most header fields in a request; over it: 431.")
    read_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a request head, or between two chunks of a body; then 408."
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="Idle time after which a keep-alive connection closes."
    )
    decode_budget_mb: int = Field(
        2048, ge=64, description="Memory all concurrent image decodes may use together (estimated)."
    )
    decode_wait_s: float = Field(
        10.0, ge=0, description="Longest wait for a share of the decode budget; then 503 busy (0: no wait)."
    )
    # The domain gate (model.domain), on every channel; strict by default.
    domain_modality_rule: bool = Field(
        True, description="Refuse DICOM whose Modality / SOP class is not a radiograph."
    )
    domain_view_rule: bool = Field(
        True, description="Refuse DICOM whose view tags (or descriptions) say lateral or oblique."
    )
    domain_body_part_rule: bool = Field(
        True, description="Refuse DICOM whose BodyPartExamined is not the chest."
    )
    domain_age_rule: bool = Field(
        True, description="Warn outside_training_population when the patient's age is outside the model's."
    )
    domain_image_check: ImageCheck = Field(
        "strict",
        description="The image check (colour, blank, tiny, not a chest radiograph): strict refuses, "
        "advisory warns and scores, off skips it.",
    )
    # Batch jobs.
    broker_url: str | None = Field(None, description="Redis URL for Celery; unset = no broker.")
    import_root: Path | None = Field(None, description="The only tree batch jobs may read.")
    results_dir: Path = Field(Path("results"), description="Where job result files go.")
    chunk_size: int = Field(32, ge=1, description="Files per Celery task.")
    max_zip_mb: float = Field(2048.0, gt=0, description="Largest accepted zip upload for a job.")
    worker_metrics_port: int | None = Field(None, ge=1, le=65535, description="Prometheus port of a worker.")
    queue: str = Field("squid-batch", min_length=1, description="Celery queue of the batch tasks.")
    key_prefix: str = Field("squid", min_length=1, description="Prefix of the Redis keys of jobs and cache.")
    visibility_timeout_s: int = Field(
        3600, ge=2, description="Redis visibility timeout: an unacknowledged task is redelivered after it."
    )
    task_time_limit_s: int = Field(
        1800, ge=1, description="Hard limit of one task; must stay below the visibility timeout."
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        description="Times a file may stop its worker (killed, crashed, time limit) before it fails as "
        "kills_worker; a chunk that lost a delivery is scored one file at a time (poison-pill guard).",
    )
    worker_max_memory_mb: int = Field(
        2048,
        ge=1,
        description="A worker pool process above this resident size is replaced after its current task.",
    )
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="How often a running batch task refreshes its lease in Redis."
    )
    heartbeat_ttl_s: float = Field(
        45.0,
        gt=0,
        description="Lease lifetime: a task whose worker stopped beating this long is re-published.",
    )
    recovery_interval_s: float = Field(
        15.0, gt=0, description="How often each worker looks for tasks orphaned by a lost worker."
    )
    storage_retries: int = Field(
        5, ge=0, description="Retries of a batch task that found the results folder full or unwritable."
    )
    storage_backoff_s: float = Field(
        5.0, gt=0, description="Wait before the first such retry; doubled for each one after."
    )
    max_zip_extract_mb: float = Field(8192.0, gt=0, description="Largest uncompressed size of a zip job.")
    job_ttl_hours: float = Field(168.0, gt=0, description="How long finished jobs stay in Redis.")
    # The DICOM node (`squid listen`) and DICOMweb.
    dicom_ae_title: str = Field("SQUID", pattern=AE_TITLE, description="AE title of `squid listen`.")
    dicom_port: int = Field(11112, ge=1, le=65535, description="DIMSE port of `squid listen`.")
    dicom_host: str = Field("127.0.0.1", description="Address `squid listen` binds (0.0.0.0 for all).")
    dicom_allowed_aes: list[str] | None = Field(
        None, description="Calling AE titles accepted at association; unset or empty = none."
    )
    dicom_allow_any_ae: bool = Field(
        False, description="Accept every calling AE title (an open node); excludes SQUID_DICOM_ALLOWED_AES."
    )
    dicom_destinations: list[DicomDestination] | None = Field(
        None, description="C-STORE destinations of the results (JSON list); unset = none."
    )
    dicom_stow: bool = Field(False, description="Also send the results by STOW-RS to SQUID_DICOMWEB_URL.")
    dicomweb_url: str | None = Field(None, description="DICOMweb base URL (QIDO/WADO/STOW-RS).")
    dicomweb_username: str | None = Field(None, description="HTTP basic user for the DICOMweb server.")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP basic password for it.")
    dicom_spool_dir: Path = Field(Path("spool"), description="Received instances and unsent results.")
    dicom_quiet_seconds: float = Field(
        10.0, ge=0, description="A study is scored once no instance arrived for this long."
    )
    dicom_max_association_mb: float = Field(
        4096.0, gt=0, description="Most data one association may send; beyond, it is aborted."
    )
    dicom_acse_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for an association request after connecting, or an ACSE answer."
    )
    dicom_dimse_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest wait for a DIMSE answer (the C-STORE response of a destination)."
    )
    dicom_network_timeout_seconds: float = Field(
        60.0, gt=0, description="An association idle this long, or a PDU stalled this long, is closed."
    )
    dicom_max_pdu_bytes: int = Field(
        262144,
        ge=4096,
        le=64 * 1024 * 1024,
        description="Largest PDU accepted; a longer one closes the connection.",
    )
    dicom_max_associations: int = Field(16, ge=1, description="Associations the node serves at once.")
    dicom_max_connections: int = Field(
        64, ge=1, description="Open connections (associated or not) the node holds at once."
    )
    dicom_max_connections_per_peer: int = Field(
        32, ge=1, description="Open connections one peer address may hold."
    )
    dicom_send_attempts: int = Field(5, ge=1, description="Sends of one result before its dead letter.")
    dicom_retry_seconds: float = Field(
        30.0, ge=0, description="Wait after a failed send (doubles each time)."
    )
    dicom_metrics_port: int | None = Field(None, ge=1, le=65535, description="Prometheus port of the node.")
    dicom_metrics_host: str | None = Field(
        None, description="Address of the node's metrics endpoint; unset = dicom_host."
    )
    dicom_keep_results_days: float = Field(
        0.0, ge=0, description="Days the node keeps the SR/SC it queued; 0 = delete once queued for delivery."
    )
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate: `squid listen` speaks DICOM TLS.")
    dicom_tls_key: Path | None = Field(None, description="PEM private key of that certificate.")
    dicom_tls_ca: Path | None = Field(None, description="CA bundle: when set, callers must present a cert.")
    # The worklist on the web page.
    node_state_dir: Path | None = Field(
        None,
        description="The node's worklist records and health, read by the API; default: <spool>/worklist.",
    )
    worklist_patient_identifiers: bool = Field(
        False,
        description="Show patient name and ID in the worklist (the page may reach more people than PACS).",
    )

    @model_validator(mode="after")
    def _time_limit_below_visibility(self) -> Settings:
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                "task_time_limit_s must be below visibility_timeout_s, or running tasks get redelivered"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_below_ttl(self) -> Settings:
        if self.heartbeat_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "heartbeat_ttl_s must be at least twice heartbeat_interval_s, or one late beat "
                "re-publishes a task that is still running"
            )
        return self

    @model_validator(mode="after")
    def _node_limits(self) -> Settings:
        if self.dicom_allow_any_ae and self.dicom_allowed_aes:
            raise ValueError("set dicom_allowed_aes or dicom_allow_any_ae, not both")
        if max(self.dicom_max_associations, self.dicom_max_connections_per_peer) > self.dicom_max_connections:
            raise ValueError(
                "dicom_max_associations and dicom_max_connections_per_peer must not exceed "
                "dicom_max_connections"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("dicom_tls_cert and dicom_tls_key must be set together")
        return self

    @property
    def gate_policy(self) -> GatePolicy:
        """The domain gate's policy these settings ask for (``model.runtime.open_runtime`` reads it)."""
        rules = {
            DomainReason.MODALITY.value: self.domain_modality_rule,
            DomainReason.VIEW.value: self.domain_view_rule,
            DomainReason.BODY_PART.value: self.domain_body_part_rule,
        }
        return GatePolicy(
            header_rules=frozenset(rule for rule, on in rules.items() if on),
            age_rule=self.domain_age_rule,
            image_check=self.domain_image_check,
        )

    @property
    def node_state(self) -> Path:
        """Where ``squid listen`` keeps its worklist records and health for the API to read."""
        return self.node_state_dir or self.dicom_spool_dir / "worklist"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
