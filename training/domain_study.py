"""How well the domain gate's image check separates frontal chest films from everything else.

``python -m training.domain_study --out docs/img/domain-gate-roc.png --json bench/results/domain_gate.json``
measures, with the artifact's own graph (``domain_distance``) and gate:

* pass rates of the in-domain sets (the training folder, test-dev normals and pneumonia) and of
  test-dev normals altered the way in-domain anomalies look (mirrored, a coin-sized bright disc in a
  lung field, a darker or brighter lower lung field): the anomaly score must judge those, not the gate;
* what the gate says about real out-of-domain images available here (pydicom's bundled CT, MR, NM
  and ultrasound files, the WG04 hip and extremity films, the highdicom dog thorax, scikit-image's
  sample pictures when installed) and synthetic ones (rotated and upside-down films);
* with ``--covid-repo GIT_DIR`` (a clone of a covid-chestxray-dataset copy, never committed): its
  CT slices and lateral films (out of domain) and adult frontal films (in domain for the image
  check; their age is the population rule's business);
* the ROC of in-domain against out-of-domain distances, plotted with the threshold.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.imaging import ImageRejected, OutOfDomain, read_image, read_path
from model.runtime import SquidRuntime
from model.steps import prepare, verdict

Pixels = NDArray[np.float32]
DISC_RADII_AT_128 = (6, 8, 10)
ZHANGLAB = Path("../shared/data/zhanglab-224")
PYDICOM_OUT_OF_DOMAIN = (
    "CT_small.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "MR_small.dcm",
    "examples_overlay.dcm",
    "JPEG2000.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "image_dfl.dcm",
)


# --- in-domain alterations (on display-ready pixels, before preprocessing) -------------------------


def mirrored(pixels: Pixels, _: np.random.Generator) -> Pixels:
    return np.ascontiguousarray(np.fliplr(pixels))


def with_disc(pixels: Pixels, rng: np.random.Generator) -> Pixels:
    """A bright disc (a coin, a button) of 6-10 px radius at the model's 128 px, in a lung field."""
    rows, cols = pixels.shape
    radius = rng.choice(DISC_RADII_AT_128) * rows / 128
    centre_y = rng.uniform(0.35, 0.6) * rows
    centre_x = rng.choice([0.3, 0.7]) * cols + rng.uniform(-0.05, 0.05) * cols
    y, x = np.ogrid[:rows, :cols]
    out = pixels.copy()
    out[(y - centre_y) ** 2 + (x - centre_x) ** 2 <= radius**2] = float(pixels.max())
    return out


def with_region(value: str) -> Callable[[Pixels, np.random.Generator], Pixels]:
    """A lower lung field filled darker (``"dark"``) or brighter, opaque (``"bright"``)."""

    def alter(pixels: Pixels, rng: np.random.Generator) -> Pixels:
        rows, cols = pixels.shape
        out = pixels.copy()
        left = rng.choice([0.15, 0.55])
        region = (
            slice(int(0.55 * rows), int(0.78 * rows)),
            slice(int(left * cols), int((left + 0.3) * cols)),
        )
        low, high = np.percentile(pixels, (2, 98))
        out[region] = low if value == "dark" else high
        return out

    return alter


ALTERATIONS: dict[str, Callable[[Pixels, np.random.Generator], Pixels]] = {
    "mirrored": mirrored,
    "bright disc (coin) in a lung": with_disc,
    "darker lower lung field": with_region("dark"),
    "opaque lower lung field": with_region("bright"),
}


# --- measuring -------------------------------------------------------------------------------------


def distances_of(runtime: SquidRuntime, images: Iterable[Pixels], batch: int = 64) -> NDArray[np.float64]:
    """The graph's domain distance of display-ready images (preprocessed as the artifact says)."""
    prep = runtime.preprocessing
    arrays = [prep(image) for image in images]
    out: list[float] = []
    for start in range(0, len(arrays), batch):
        results = runtime.score(np.stack(arrays[start : start + batch]), with_map=False)
        out += [float(r.domain_distance if r.domain_distance is not None else np.nan) for r in results]
    return np.asarray(out, dtype=np.float64)


def outcome(runtime: SquidRuntime, data: bytes) -> str:
    """``scored``, or ``out_of_domain:<reasons>``, or the rejection reason, under the runtime's gate."""
    try:
        item = prepare(data, runtime.preprocessing, 100_000_000, runtime.gate)
        verdict(runtime.gate, item, runtime.score(item.array[None], with_map=False)[0])
    except OutOfDomain as exc:
        return "out_of_domain:" + ",".join(exc.reasons)
    except ImageRejected as exc:
        return exc.reason
    return "scored"


def folder_pixels(folder: Path, step: int = 1) -> list[Pixels]:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())[::step]
    return [read_path(p, header_rules=()).pixels for p in files]


def roc(inside: NDArray[np.float64], outside: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """False and true positive rates of "out of domain" over every threshold, and the AUC."""
    scores = np.concatenate([inside, outside])
    labels = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    order = np.argsort(-scores, kind="mergesort")
    tpr = np.concatenate([[0.0], np.cumsum(labels[order]) / max(1, len(outside))])
    fpr = np.concatenate([[0.0], np.cumsum(1 - labels[order]) / max(1, len(inside))])
    auc = float(np.trapezoid(tpr, fpr))
    return fpr, tpr, np.asarray([auc])


def _git_files(git_dir: Path) -> dict[str, str]:
    names = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "HEAD", "images/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    by_name: dict[str, str] = {}
    for name in sorted(names, key=lambda n: n.count("/"), reverse=True):  # images/<file> wins
        by_name[Path(name).name] = name
    return by_name


def covid_groups(git_dir: Path) -> dict[str, list[bytes]]:
    """CT slices, lateral films and adult frontal films of a covid-chestxray-dataset copy."""

    def show(name: str) -> bytes:
        """The file's bytes; empty when the copy lacks it (large blobs may be left out of a mirror)."""
        run = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"], capture_output=True)
        return run.stdout if run.returncode == 0 else b""

    meta = show("metadata.csv").decode("utf-8", "replace")
    if not meta:
        raise FileNotFoundError(f"{git_dir} has no metadata.csv")
    files = _git_files(git_dir)
    groups: dict[str, list[bytes]] = {"CT slices": [], "lateral films": [], "adult frontal films": []}
    for row in csv.DictReader(io.StringIO(meta)):
        name = files.get((row.get("filename") or "").strip())
        view, modality = (row.get("view") or "").strip(), (row.get("modality") or "").strip()
        if name is None or not (data := show(name)):
            continue
        if modality == "CT":
            groups["CT slices"].append(data)
        elif view == "L":
            groups["lateral films"].append(data)
        elif view in ("PA", "AP", "AP Supine"):
            groups["adult frontal films"].append(data)
    return groups


def pydicom_files() -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    return {name: Path(str(get_testdata_file(name))).read_bytes() for name in PYDICOM_OUT_OF_DOMAIN}


def skimage_pictures() -> dict[str, bytes]:
    try:
        import skimage.data
    except ImportError:
        return {}
    folder = Path(skimage.data.__file__).parent
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))}


def _header_free(data: bytes) -> Pixels:
    return read_image(data, header_rules=()).pixels


def study(runtime: SquidRuntime, data_root: Path, covid: Path | None, shared_dicom: Path) -> dict[str, Any]:
    """Every measurement of the module docstring, as one JSON-able dict (and the ROC arrays)."""
    threshold = runtime.gate.threshold
    assert threshold is not None, "the artifact has no domain model"
    rng = np.random.default_rng(0)
    dev_normal = folder_pixels(data_root / "test-dev" / "NORMAL")
    inside = {
        "training folder": distances_of(runtime, folder_pixels(data_root / "train")),
        "test-dev normal": distances_of(runtime, dev_normal),
        "test-dev pneumonia": distances_of(runtime, folder_pixels(data_root / "test-dev" / "PNEUMONIA")),
    }
    altered = {
        name: distances_of(runtime, [alter(image, rng) for image in dev_normal])
        for name, alter in ALTERATIONS.items()
    }
    synthetic = {
        "test-dev normals rotated 90 degrees": distances_of(
            runtime, [np.rot90(p).copy() for p in dev_normal]
        ),
        "test-dev normals upside down": distances_of(runtime, [np.flipud(p).copy() for p in dev_normal]),
    }
    real: dict[str, dict[str, bytes]] = {
        "pydicom CT/MR/NM/US files": pydicom_files(),
        "WG04 hip and extremity (CR)": {
            p.name: p.read_bytes() for p in sorted((shared_dicom / "wg04" / "REF").glob("*.dcm"))
        },
        "dog thorax (DX)": {"dx_image.dcm": (shared_dicom / "highdicom" / "dx_image.dcm").read_bytes()},
        "scikit-image sample pictures": skimage_pictures(),
    }
    adults: dict[str, NDArray[np.float64]] = {}
    if covid is not None:
        groups = covid_groups(covid)
        adults["adult frontal films (covid-chestxray copy)"] = distances_of(
            runtime, [_header_free(d) for d in groups.pop("adult frontal films")]
        )
        for name, items in groups.items():
            real[f"{name} (covid-chestxray copy)"] = {str(i): data for i, data in enumerate(items)}
    outside: dict[str, NDArray[np.float64]] = dict(synthetic)
    outcomes: dict[str, dict[str, str]] = {}
    for group, files in real.items():
        if not files:
            continue
        outside[group] = distances_of(runtime, [_header_free(d) for d in files.values()])
        outcomes[group] = {str(name): outcome(runtime, data) for name, data in files.items()}
    real_inside = np.concatenate([inside["test-dev normal"], inside["test-dev pneumonia"]])
    real_outside = np.concatenate([v for k, v in outside.items() if k not in synthetic])
    fpr, tpr, auc = roc(real_inside, real_outside)
    passed = lambda d: round(float(np.mean(d <= threshold)), 4)  # noqa: E731
    return {
        "threshold": threshold,
        "artifact": runtime.path.name,
        "model_version": runtime.metadata.model_version,
        "in_domain_pass_rate": {k: {"n": len(v), "pass": passed(v)} for k, v in inside.items()},
        "altered_test_dev_normals_pass_rate": {
            k: {"n": len(v), "pass": passed(v)} for k, v in altered.items()
        },
        "adult_frontal_pass_rate": {k: {"n": len(v), "pass": passed(v)} for k, v in adults.items()},
        "out_of_domain_refused_by_image_check": {
            k: {"n": len(v), "refused": round(1 - passed(v), 4)} for k, v in outside.items()
        },
        "gate_outcomes": outcomes,
        "roc_auc_test_dev_vs_real_out_of_domain": round(float(auc[0]), 4),
        "_roc": (fpr, tpr, real_inside, real_outside),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, inside, outside = result["_roc"]
    threshold = result["threshold"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(fpr, tpr, lw=2)
    left.plot(
        [np.mean(inside > threshold)],
        [np.mean(outside > threshold)],
        "o",
        color="crimson",
        label="shipped threshold",
    )
    left.set(
        xlabel="test-dev films refused (false positive rate)",
        ylabel="out-of-domain images refused (true positive rate)",
        title=f"image check ROC, AUC {result['roc_auc_test_dev_vs_real_out_of_domain']:.3f}",
    )
    left.legend(loc="lower right")
    low = max(1e-3, float(min(inside.min(), outside.min())))
    bins = np.logspace(np.log10(low), np.log10(float(max(inside.max(), outside.max()))), 60)
    right.hist(inside, bins=bins, alpha=0.6, label=f"test-dev normal + pneumonia ({len(inside)})")
    right.hist(outside, bins=bins, alpha=0.6, label=f"real out-of-domain images ({len(outside)})")
    right.axvline(threshold, color="crimson", ls="--", label=f"threshold {threshold:.0f}")
    right.set(xscale="log", xlabel="domain distance", ylabel="images", title="distances")
    right.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=ZHANGLAB, help="zhanglab-224 folder")
    parser.add_argument("--dicom", type=Path, default=Path("../shared/data/dicom"))
    parser.add_argument("--covid-repo", type=Path, default=None, help="git dir of a covid-chestxray copy")
    parser.add_argument("--out", type=Path, required=True, help="ROC figure (PNG)")
    parser.add_argument("--json", type=Path, required=True, help="results (JSON)")
    args = parser.parse_args()
    runtime = SquidRuntime(args.model)
    result = study(runtime, args.data, args.covid_repo, args.dicom)
    plot(result, args.out)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(public, indent=2) + "\n")
    print(json.dumps({k: v for k, v in public.items() if k != "gate_outcomes"}, indent=2))


if __name__ == "__main__":
    main()
