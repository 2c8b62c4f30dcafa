"""``squid``: one entry point with a subcommand per job.

Training commands import torch lazily, so ``squid score`` / ``serve`` / ``worker`` stay torch-free.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="squid",
    help="SQUID chest X-ray anomaly scoring: train, evaluate, export, score, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# The ages of the training patients, recorded in the artifact for the domain gate's age rule.
PopulationAge = Annotated[
    str | None,
    typer.Option(help="Ages of the training patients in years, e.g. 1-5 (default: known for the data)."),
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _require_training() -> None:
    """Training commands need torch; a serving-only install says so instead of a traceback."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise _fail("this command needs the training extra: pip install -e '.[train]'") from exc


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Option(help="NORMAL/ + anomalous class folders, a path,label CSV, or an MNIST .npy folder."),
    ],
    out: Annotated[Path, typer.Option(help="Best checkpoint to write (a .last file is kept beside it).")],
    preset: Annotated[str, typer.Option(help="Config preset: thesis, lite or digit.")] = "thesis",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seeds the weights, batches and augmentation.")] = 0,
    split_seed: Annotated[
        int,
        typer.Option(
            help="Seeds the validation split on its own, so runs with other --seed values "
            "(ensemble members) hold out the same patients."
        ),
    ] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's .last checkpoint.")] = False,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this much training time.")] = None,
    threshold_rule: Annotated[str, typer.Option(help="f1_optimal or normal_percentile.")] = "f1_optimal",
    val_normal: Annotated[int, typer.Option(help="Normal images held out for validation.")] = 100,
    val_anomalous: Annotated[int, typer.Option(help="Anomalous images held out for validation.")] = 100,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config field: name=JSON value.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    select_data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled target-domain folder or CSV that selects the epoch and the threshold "
            "instead of the validation split (never trained on)."
        ),
    ] = None,
    selection_window: Annotated[
        int, typer.Option(min=1, help="Select on the AUC averaged over this many trailing epochs.")
    ] = 1,
    keep_epochs: Annotated[
        bool, typer.Option(help="Also keep every epoch's weights in OUT.epochs/ for later analysis.")
    ] = False,
) -> None:
    """Train SQUID on normal images, select the best epoch, calibrate and threshold."""
    _require_training()
    import torch

    from model.config import preset as get_preset
    from training.pipeline import SplitSpec
    from training.pipeline import train as run_training
    from training.trainer import TrainOptions

    if threads:
        torch.set_num_threads(threads)
    try:
        config = get_preset(preset)
        overrides = dict(_parse_override(item) for item in set_ or [])
        if overrides:
            config = config.replace(**overrides)
        best = run_training(
            config,
            data,
            out,
            TrainOptions(
                epochs=epochs,
                seed=seed,
                threshold_rule=threshold_rule,
                max_minutes=max_minutes,
                selection_window=selection_window,
                keep_epochs=keep_epochs,
            ),
            SplitSpec(val_normal, val_anomalous, split_seed),
            resume=resume,
            selection=select_data,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"best epoch {best.epoch} (score norm {best.score_norm}): validation "
        + ", ".join(f"{k}={v:.4f}" for k, v in best.validation.items() if isinstance(v, float))
        + f"\nwrote {out}"
    )


def _parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ValueError(f"--set expects name=value, got {item!r}")
    key, value = item.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A calibrated checkpoint from `squid train`.")],
    out: Annotated[Path, typer.Option(help="Report folder.")],
    data: Annotated[
        list[Path] | None,
        typer.Option(help="A labelled folder or path,label CSV to evaluate whole (repeatable)."),
    ] = None,
    validation: Annotated[
        bool, typer.Option(help="Also evaluate the checkpoint's own validation split.")
    ] = True,
    autoencoder: Annotated[
        Path | None, typer.Option(help="An auto-encoder from `squid baseline`, to compare with.")
    ] = None,
    anomalies: Annotated[
        bool,
        typer.Option(
            help="Also alter each split's normal films (mirrored, foreign body, lucent, opaque, ...) and "
            "report per-kind AUC: the structural-anomaly benchmark."
        ),
    ] = True,
) -> None:
    """SQUID next to the baselines on each split (AUC with 95% bootstrap intervals), plus per-split
    metrics, ROC/PR curves, score histograms, reconstructions and the training curves."""
    _require_training()
    from training.pipeline import evaluate as run_evaluation

    try:
        report = run_evaluation(checkpoint, out, data or [], validation, autoencoder, anomalies=anomalies)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    keys = ("auc", "accuracy", "f1", "sensitivity", "specificity", "threshold")
    for name, metrics in report["splits"].items():
        typer.echo(f"{name}: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys))
    typer.echo((out / "comparison.md").read_text())
    if "structural" in report:
        typer.echo("structural anomalies (AUC of altered copies against the same films):")
        typer.echo((out / "structural.md").read_text())
    typer.echo(f"report in {out}")


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A calibrated checkpoint from `squid train`.")],
    out: Annotated[Path, typer.Option(help="ONNX artifact to write.")],
    data: Annotated[
        Path | None, typer.Option(help="Images for the parity check (default: the training data).")
    ] = None,
    check_images: Annotated[
        int, typer.Option(min=2, help="How many real images the parity check uses.")
    ] = 16,
    version: Annotated[str | None, typer.Option(help="Model version to record (default: derived).")] = None,
    population_age: PopulationAge = None,
) -> None:
    """Export E -> in-painting -> Gs -> D with queue and calibration inside one ONNX file.

    The anomaly map's reference (the training normals' mean image and mean raw score) and the
    domain gate (fitted on the training folder, calibrated on it and the selection set) are
    computed here, so the checkpoint's data must still be where it was trained."""
    _require_training()
    from training import checkpoint as ckpt
    from training.export import ExportError, describe, export
    from training.pipeline import parity_images, training_normals
    from training.populations import parse_age_range

    try:
        population = parse_age_range(population_age) if population_age else None
        state = ckpt.load(checkpoint)
        images = parity_images(state, data, check_images)
        normals = training_normals(state, progress=False)
        report = export(state, out, images, normals, version, population=population)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(describe(report), indent=2))


@app.command("add-domain-gate")
def add_domain_gate(
    artifact: Annotated[Path, typer.Argument(help="An exported artifact (its checkpoint is not needed).")],
    data: Annotated[Path, typer.Option(help="The training folder the model was trained on (every class).")],
    select_data: Annotated[
        Path | None, typer.Option(help="The labelled selection set, calibrated on too (e.g. test-dev).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write (default: replace ARTIFACT).")] = None,
    population_age: PopulationAge = None,
) -> None:
    """Add (or refit) the domain gate's image check in an exported artifact; every score stays
    bit-identical (checked on real films before anything is written)."""
    _require_training()
    from training.domain_export import DomainGateError, add_to_artifact
    from training.populations import parse_age_range

    try:
        population = parse_age_range(population_age) if population_age else None
        described = add_to_artifact(artifact, out or artifact, data, select_data, population)
    except (FileNotFoundError, ValueError, DomainGateError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(described, indent=2))


@app.command()
def ensemble(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Two or more calibrated checkpoints of one recipe (other seeds).")
    ],
    out: Annotated[Path, typer.Option(help="Ensemble checkpoint to write (export it like any checkpoint).")],
    threshold_rule: Annotated[str, typer.Option(help="f1_optimal or normal_percentile.")] = "f1_optimal",
    select_data: Annotated[
        Path | None,
        typer.Option(help="Labelled set for the threshold (default: the one the members were selected on)."),
    ] = None,
) -> None:
    """Combine checkpoints into one model whose raw score is their discriminators' mean logit,
    calibrated and thresholded afresh."""
    _require_training()
    from training import checkpoint as ckpt
    from training.ensemble import combine

    try:
        combined = combine([ckpt.load(p) for p in checkpoints], threshold_rule, select_data)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    ckpt.save(combined, out)
    typer.echo(
        f"ensemble of {len(checkpoints)}: validation "
        + ", ".join(f"{k}={v:.4f}" for k, v in combined.validation.items() if isinstance(v, float))
        + f"\nwrote {out}"
    )


@app.command()
def score(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files.")],
    model: Annotated[
        Path | None, typer.Option(help="Artifact (default: $SQUID_MODEL_PATH or the shipped one).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the artifact's threshold.")] = None,
    operating_point: Annotated[
        str | None,
        typer.Option(help="A named threshold of the artifact: default, spec90 (0.90 specificity)."),
    ] = None,
    heatmap: Annotated[Path | None, typer.Option(help="Folder for heatmap overlay PNGs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    dicom_out: Annotated[
        Path | None,
        typer.Option(help="Folder for a DICOM SR and secondary capture of each DICOM input (PACS results)."),
    ] = None,
) -> None:
    """Score X-rays: one line per file with score, label and threshold."""
    from cli.scoring import score_files

    try:
        failures = score_files(files, model, threshold, heatmap, as_json, dicom_out, operating_point)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if failures:
        raise typer.Exit(code=1)


@app.command()
def baseline(
    data: Annotated[Path, typer.Option(help="The same data (folder or CSV) SQUID was trained on.")],
    out: Annotated[
        Path, typer.Option(help="Auto-encoder weights to write (.pt); a .json summary goes beside it.")
    ],
    preset: Annotated[str, typer.Option(help="Widths to borrow from this SQUID preset.")] = "lite",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    select_data: Annotated[
        Path | None, typer.Option(help="Labelled folder or CSV that selects the epoch (as in train).")
    ] = None,
    val_normal: Annotated[int, typer.Option(help="Normal images held out, as in train.")] = 100,
    val_anomalous: Annotated[int, typer.Option(help="Anomalous images held out, as in train.")] = 100,
) -> None:
    """Train the plain auto-encoder baseline on SQUID's split; `squid evaluate --autoencoder` compares."""
    _require_training()
    import torch

    from model.config import preset as get_preset
    from training.baseline import save_autoencoder, train_autoencoder
    from training.pipeline import SplitSpec, prepare_data, preprocessing_of

    if threads:
        torch.set_num_threads(threads)
    config = get_preset(preset)
    try:
        split = SplitSpec(val_normal, val_anomalous, seed)
        prepared = prepare_data(data, preprocessing_of(config), split, selection=select_data)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    chosen = prepared.selection_set()
    result = train_autoencoder(config, prepared.train, chosen.images, chosen.labels, epochs, seed)
    save_autoencoder(result, config, out)
    record = {
        "model": "autoencoder",
        "preset_widths": preset,
        "epochs": epochs,
        "selected_on": "selection" if select_data else "validation",
        **result.summary(),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    typer.echo(f"AE baseline: best AUC {result.val_auc:.4f} at epoch {result.best_epoch}; wrote {out}")


def _register_commands() -> None:
    from cli import jobs, node, serve

    serve.register(app)
    jobs.register(app)
    node.register(app)


_register_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
