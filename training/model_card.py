"""Render the model card that ships next to an artifact, from the artifact's own metadata.

Numbers in the card come from the metadata, so the card cannot drift from the model it describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from model.artifact import METADATA_KEY, ArtifactMetadata


def read_metadata(artifact: Path) -> ArtifactMetadata:
    model = onnx.load(str(artifact), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return ArtifactMetadata.from_json(props[METADATA_KEY])


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(artifact: Path, extra: dict[str, Any]) -> str:
    """Markdown model card; ``extra`` adds facts the metadata cannot know (machine, baseline, ...)."""
    meta = read_metadata(artifact)
    training = meta.training
    data = training.get("data", {})
    config = training.get("config", {})
    val = meta.validation
    size_mb = artifact.stat().st_size / 1e6
    rows = [
        ("AUC (ROC)", val.get("auc")),
        ("accuracy", val.get("accuracy")),
        ("F1", val.get("f1")),
        ("sensitivity", val.get("sensitivity")),
        ("specificity", val.get("specificity")),
        ("normal / pneumonia images", f"{val.get('n_normal')} / {val.get('n_anomalous')}"),
    ]
    table = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in rows)
    history = extra.get("history_summary", "")
    selection = val.get("selection", {})
    judged = (
        "the input image itself (`score_on=input`, a measured alternative to the thesis' Eq. 3.5: see "
        "docs/experiments.md)"
        if config.get("score_on") == "input"
        else "the in-painted reconstruction (thesis Eq. 3.5)"
    )
    selected_on = (
        f"the selection set `{Path(data.get('selection', {}).get('root', '?')).name}` "
        f"({selection.get('n_normal')} normal / {selection.get('n_anomalous')} pneumonia; "
        f"AUC {_fmt(selection.get('auc'))} there)"
        if selection
        else "the validation split"
    )
    points = ", ".join(f"`{name}` {value:.4f}" for name, value in meta.operating_points.items())
    heatmap = _heatmap_section(meta)
    return f"""# Model card: {meta.model_name} {meta.model_version}

`{artifact.name}` ({size_mb:.1f} MB, weights sha256 `{meta.weights_sha256[:16]}…`) is the default model of
`squid score`, `squid serve`, the batch workers and the container image.

## Intended use
Research and **triage support**: ranking or flagging frontal (PA/AP) chest radiographs that look unlike
the normal studies the model was trained on, so a person looks at them sooner. It is **not a diagnostic
device**, has no regulatory clearance, and must not be used to rule disease in or out. Every flag needs a
radiologist's read.

## Model
SQUID (Xiang et al., CVPR 2023): a patch encoder, a space-aware memory queue of normal features, a
neighbour-attention in-painting block, student/teacher generators and a discriminator. The raw score is
the discriminator's logit on {judged}. Preset `{meta.preset}`: encoder {config.get("encoder_channels")},
{config.get("grid")}x{config.get("grid")} patches, queue {config.get("queue_items")} items per region,
top-k {config.get("top_k")}, discriminator normalisation at scoring: `{meta.score_norm}`.
Calibrated score `A = sigmoid(-(raw - mu)/sigma)` with mu = {meta.calibration["mu"]:.4f},
sigma = {meta.calibration["sigma"]:.4f} (raw scores of the training normals, no augmentation);
higher = more anomalous.

## Training data and licence
ZhangLab pediatric chest X-rays (Kermany et al., Cell 2018; data CC BY 4.0), the official **train** split
resized to 224 px. Normals only are trained on: {data.get("n_train")} images; a validation split of
{data.get("n_validation")} images (about 100 normal + 100 pneumonia, **split by patient**, seed
{data.get("split", {}).get("seed")}) is held out. The epoch, the discriminator normalisation and the threshold
were chosen on {selected_on}, never trained on. Training data digest `{str(data.get("digest", ""))[:16]}…`.

## Preprocessing
{json.dumps(meta.preprocessing, indent=2)}

DICOM input goes through the modality LUT, the VOI LUT (first window; full range when absent) and
MONOCHROME1 / Presentation LUT inversion before this step.

## Validation (the held-out split, at the shipped threshold)
Threshold {meta.threshold:.4f}, rule `{meta.threshold_rule}`, chosen on {selected_on}. Other operating
points in the artifact (`SQUID_OPERATING_POINT`): {points or "none"}.

| metric | value |
|---|---|
{table}

The selection-set AUC above is optimistic (it chose the epoch); the held-out split from the training
folder overstates what a new site sees (the official test split is shifted: every method loses 0.11-0.14
AUC there). {extra.get("test_note", "")}

## How it was trained
{_members(training)}{training.get("train_seconds", 0) / 60:.0f} min of training on
{extra.get("machine", "a CPU machine")}. Package {training.get("package_version")}, commit
`{training.get("git_commit")}`. {history}

{extra.get("comparison", "")}

{extra.get("structural", "")}

## The heatmap
{heatmap}

## The domain gate
{_gate_section(meta)}

## Known limits
- Pediatric patients (1-5 years, one centre in Guangzhou): adult chests, other scanners and other
  populations are out of distribution and will score as more anomalous; with a patient's age in the
  header the answer carries `outside_training_population`.
- Frontal (PA/AP) views only: the domain gate refuses lateral views by their tags, and most of them
  by the image check when the tags are missing (not all: see above).
- Trained on 8-bit JPEG renderings; DICOM windowing choices change the input and can shift scores.
- "Anomalous" means unlike the training normals, not a specific finding; pneumonia was the only
  abnormality available for validation.
- The discriminator signal varies between epochs; retraining with another seed gives another model.
- It does not see structural anomalies: a mirrored film, a coin in a lung, a lucent or an opaque lung
  region score like the same film unaltered (AUC 0.46-0.56 on the structural benchmark above).
"""


def _heatmap_section(meta: ArtifactMetadata) -> str:
    """What the artifact's anomaly map is, and what it is not."""
    info = meta.anomaly_map
    if "display_max" not in info:
        return (
            "The map is the smoothed |input - reconstruction| residual, scaled per image. It is **not**\n"
            "what the score used and does not explain it (no better than chance in the deletion benchmark)."
        )
    if info.get("method") != "integrated_gradients":
        return (
            f"The map is `{info.get('method')}` with a fixed colour scale (full colour at "
            f"{info.get('display_max', 0):.3g} per pixel); see docs/heatmap.md."
        )
    return f"""Evidence for the score, **not a lesion segmentation**. Each pixel is its integrated-gradients
attribution of the raw score: how much moving it from the mean image of {info.get("reference_images")}
training normals to this image moved the discriminator's logit ({info.get("path_steps")} steps on the
path), smoothed by a Gaussian of {info.get("smoothing_sigma_px")} px, signed so that positive =
evidence for "anomalous", minus the training normals' mean map (so it shows where this image is less
normal than the normals usually are). What is left of the total is spread evenly, so the pixels add
up to `-(raw - {info.get("reference_raw_mean", 0):.4f})`, the raw score's deviation from the
normals' mean; divided by sigma that is the calibrated z. It says which parts of the film drove the
score; a region it ranks high is one whose replacement by normal pixels lowers the score (measured:
docs/heatmap.md, `bench/map_faithfulness.py`); it does not trace a lesion's border.
Overlays use a fixed colour scale: full colour at {info.get("display_max", 0):.3g} per pixel, a level
{100 * (1 - info.get("display_quantile", 0.99)):.0f} % of the training normals' map pixels exceed."""


def _gate_section(meta: ArtifactMetadata) -> str:
    """What the artifact's domain gate checks, and how its image check was calibrated."""
    domain, population = meta.domain, meta.population
    ages = population.get("age_years") or {}
    who = (
        f"Training population: {population.get('description', '')} ({population.get('source', '')}); "
        f"a header age outside {ages.get('min')} to {ages.get('max')} years gives the warning "
        "`outside_training_population` (the film is still scored)."
        if ages
        else "No training population is recorded: the age rule is off for this artifact."
    )
    if "threshold" not in domain:
        return (
            "This artifact has no image check (exported before the gate): only the header rules apply, "
            f"and every answer says `image_check_unavailable`. {who}"
        )
    rates = ", ".join(f"{name} {rate:.3f}" for name, rate in domain.get("pass_rates", {}).items())
    return f"""Before any verdict, every input (every channel: API, CLI, batch jobs, DICOM node) passes a
domain gate; what fails gets `out_of_domain` with reasons and no normal/anomalous label
(README "The domain gate", docs/domain-gate.md). Header rules (DICOM): `modality`, `view` (lateral or
oblique, from ViewPosition, the view code or the series/protocol descriptions), `body_part`. Image
rules: `color_image`, `blank_image`, `image_too_small`. The image check (`not_a_chest_radiograph`)
is in this artifact's graph: {domain.get("method")} ({domain.get("components")} components, fitted on
{domain.get("fit_images")} training films and their mirror images) combined with a mediastinal-ridge
cue, calibrated so that these calibration groups pass: {rates}. {who}"""


def _members(training: dict[str, Any]) -> str:
    """Who scores: one run's selected epoch, or an ensemble's members (``squid ensemble``)."""
    members = training.get("ensemble", [])
    if len(members) <= 1:
        return (
            f"Epoch {training.get('epoch')} of {training.get('epochs')} planned (best selection AUC), "
            f"seed {training.get('seed')}, "
        )
    each = "; ".join(f"seed {m['seed']}, epoch {m['epoch']} (`{m['score_norm']}`)" for m in members)
    return (
        f"An ensemble of {len(members)} runs of the same recipe ({training.get('epochs')} epochs planned "
        f"each, every run's epoch chosen by its best selection AUC): {each}. The raw score is their "
        "discriminators' mean logit; the first run's generator draws the reconstruction. In all, "
    )


def write(artifact: Path, out: Path, extra: dict[str, Any]) -> None:
    out.write_text(render(artifact, extra))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Render MODEL_CARD.md from an artifact's metadata.")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--extra", type=Path, help="JSON with machine, comparison, history_summary, test_note"
    )
    args = parser.parse_args()
    extra = json.loads(args.extra.read_text()) if args.extra else {}
    write(args.artifact, args.out, extra)


if __name__ == "__main__":
    main()
