"""Batch scoring throughput (files/s): in-process, 1 worker process and 2 worker processes, in one run.

Two datasets of real chest X-rays: ``small`` (ZhangLab 224 px images, half JPEG, half 12-bit DICOM
in both photometric interpretations) and ``large`` (2048 px 12-bit DICOMs, the size of real
radiographs: the *mix* of JPEG-LS, JPEG 2000, RLE and uncompressed files, plus JPEG lossless SV1 on
its own). Each is scored by ``run_inprocess`` (what ``squid batch`` does without a broker) and by a
job on ``squid worker --concurrency 1`` and ``--concurrency 2`` (a private redis-server; onnxruntime
threads = cores / processes). The resume cache is bypassed (a fresh key prefix per run), so every
file is really scored.

The large films are also scored in-process per transfer syntax, each twice in the same run: decoded
at the model's resolution (the default) and at full resolution (``SQUID_DECODE_FULL_RESOLUTION``),
with the peak memory of one decode per syntax (``bench/decode_memory.py``'s fresh-process measure,
bytes per pixel of the full image), and the same films as 256 px PNGs for scale.

Per-file breakdown (ms): read (file bytes + content hash), decode, preprocess, inference (the
chunk's batched call shared out per file) and write (chunk file; in-process also the final result
files), summed over the processes and decode threads that did the work, so with 2 processes the sum
of the stages exceeds the wall-clock time per file. ``files_per_s`` is wall clock: from submission to
the job's end as the client saw it, including planning and publishing.

Usage: ``python bench/batch_throughput.py [--small 240] [--large 6] [--chunk-size 32] [--repeats 3]``
(``--large``: films per transfer syntax; in-process runs are repeated and the median reported).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode_memory import bytes_per_pixel, measure  # noqa: E402
from model.runtime import SquidRuntime  # noqa: E402
from service.jobs.inprocess import run_inprocess  # noqa: E402
from service.jobs.manager import JobError, JobManager  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.dicom_factory import make_dicom  # noqa: E402
from tests.jobs.jobs_support import RedisServer, job_env, start_worker  # noqa: E402
from tests.jobs.pacs_tree import build_bulk_tree  # noqa: E402

STAGES = ("read", "decode", "preprocess", "inference", "write")
SIDE = 2048
MIX = {"jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless, "rle": RLELossless, "explicit-le": None}
EXTRA = ("jpeg-lossless",)  # JPEG lossless SV1 (imagecodecs' libjpeg-turbo encoder), outside the mix
PNG_SIDE = 256


def film(source: Path, noise: np.random.Generator) -> np.ndarray:
    """A 224 px film enlarged to 2048 px, 12 bits, with detector-like noise."""
    image = Image.open(source).convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint16) * 16 + noise.integers(0, 8, (SIDE, SIDE)).astype(np.uint16)


def jpeg_lossless(pixels: np.ndarray) -> bytes:
    ds = dcmread(io.BytesIO(make_dicom(pixels, bits_stored=12)))
    frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=12)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([bytes(frame)])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_large(root: Path, data: Path, per_syntax: int) -> dict[str, Path]:
    """``per_syntax`` films in every syntax: ``root/mix/<syntax>/``, ``root/<extra>/`` and the same
    films as 256 px PNGs in ``root/png/``; returns syntax -> folder."""
    sources = sorted((data / "zhanglab-224" / "train" / "NORMAL").glob("*.jpeg"))
    noise = np.random.default_rng(0)
    folders = {name: root / "mix" / name for name in MIX} | {name: root / name for name in EXTRA}
    folders["png"] = root / "png"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for name, folder in folders.items():
        if name == "png":
            continue
        for _ in range(per_syntax):
            source = sources[index]
            pixels = film(source, noise)
            if name in MIX:
                syntax = MIX[name]
                data_bytes = make_dicom(
                    pixels, bits_stored=12, **({"transfer_syntax": syntax} if syntax else {})
                )
            else:
                data_bytes = jpeg_lossless(pixels)
            (folder / f"IM{index:04d}").write_bytes(data_bytes)
            small = Image.open(source).convert("L").resize((PNG_SIDE, PNG_SIDE), Image.Resampling.BILINEAR)
            small.save(folders["png"] / f"IM{index:04d}.png")
            index += 1
    return folders


def in_process(
    folder: Path, out: Path, chunk_size: int, runtime: SquidRuntime, full: bool = False, repeats: int = 1
) -> dict[str, Any]:
    """The median of ``repeats`` in-process runs (files/s and per-stage ms)."""
    settings = Settings(chunk_size=chunk_size, decode_full_resolution=full)
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = run_inprocess(folder, out, settings, runtime=runtime, resume=False)
        runs.append((time.perf_counter() - started, summary))
    seconds, summary = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    return {
        "files": summary.total,
        "seconds": round(seconds, 3),
        "files_per_s": round(summary.total / seconds, 2),
        "files_per_s_runs": [round(summary.total / s, 2) for s, _ in runs],
        "stage_ms_per_file": {k: round(summary.timing_ms[k] / summary.total, 3) for k in STAGES},
        "counts": dict(summary.counts),
    }


def on_workers(folder: Path, tmp: Path, redis_url: str, processes: int, chunk_size: int) -> dict[str, Any]:
    import_root = folder.parent
    env = job_env(tmp, redis_url, SQUID_CHUNK_SIZE=str(chunk_size))
    env.update(
        {
            "SQUID_IMPORT_ROOT": str(import_root),
            "SQUID_VISIBILITY_TIMEOUT_S": "3600",
            "SQUID_TASK_TIME_LIMIT_S": "1800",
            "SQUID_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        }
    )
    threads = max(1, (os.cpu_count() or 1) // processes)
    tmp.mkdir(parents=True, exist_ok=True)
    worker = start_worker(env, tmp / f"worker-{processes}.log", concurrency=processes, threads=threads)
    try:
        manager = JobManager(
            Settings(
                broker_url=redis_url,
                queue=env["SQUID_QUEUE"],
                key_prefix=env["SQUID_KEY_PREFIX"],
                results_dir=Path(env["SQUID_RESULTS_DIR"]),
                import_root=import_root,
                chunk_size=chunk_size,
            )
        )
        time.sleep(1.0)  # let every pool process finish loading its model
        started = time.perf_counter()
        view = manager.submit_path(folder.name)
        while not view.finished:
            time.sleep(0.05)
            try:
                view = manager.get(view.id)
            except JobError:
                continue
        seconds = time.perf_counter() - started
    finally:
        worker.stop()
    if view.state != "succeeded":
        raise RuntimeError(f"benchmark job {view.state}: {view.error}")
    return {
        "files": view.total,
        "processes": processes,
        "onnxruntime_threads_per_process": threads,
        "seconds": round(seconds, 3),
        "files_per_s": round(view.total / seconds, 2),
        "job_elapsed_s": view.elapsed_s,
        "stage_ms_per_file": {k: view.stage_ms_per_file.get(k, 0.0) for k in STAGES},
        "counts": {"scored": view.scored, "skipped": view.skipped, "failed": view.failed},
    }


def decode_peaks(folder: Path) -> dict[str, float]:
    """Peak memory of one decode of the folder's first file, reduced and full, per full-image pixel."""
    path = sorted(folder.iterdir())[0]
    return {
        "reduced_bytes_per_pixel": bytes_per_pixel(measure(path), SIDE * SIDE),
        "full_bytes_per_pixel": bytes_per_pixel(measure(path, full_resolution=True), SIDE * SIDE),
    }


def large_runs(folders: dict[str, Path], tmp: Path, chunk: int, repeats: int) -> dict[str, Any]:
    """Per syntax and for the mix: reduced vs full decode in-process, with peak memory; PNGs for scale."""
    runtime = SquidRuntime()
    runtime.warmup()
    results: dict[str, Any] = {}
    targets = {name: folders[name] for name in (*MIX, *EXTRA)} | {"mix": folders["jpeg-ls"].parent}
    for name, folder in targets.items():
        reduced = in_process(folder, tmp / f"out-{name}", chunk, runtime, repeats=repeats)
        full = in_process(folder, tmp / f"out-{name}-full", chunk, runtime, full=True, repeats=repeats)
        entry: dict[str, Any] = {"reduced": reduced, "full": full}
        entry["speedup"] = round(reduced["files_per_s"] / full["files_per_s"], 2)
        if name != "mix":
            entry["peak_memory"] = decode_peaks(folder)
        results[name] = entry
        print(name, {"reduced": reduced["files_per_s"], "full": full["files_per_s"]}, flush=True)
    png = in_process(folders["png"], tmp / "out-png", chunk, runtime, repeats=repeats)
    results["png_256"] = {"reduced": png}
    results["mix"]["ratio_to_png_256"] = round(
        results["mix"]["reduced"]["files_per_s"] / png["files_per_s"], 3
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=240, help="files in the 224 px dataset")
    parser.add_argument("--large", type=int, default=6, help="2048 px films per transfer syntax")
    parser.add_argument("--chunk-size", type=int, default=32, help="files per chunk, small dataset")
    parser.add_argument("--large-chunk-size", type=int, default=8, help="files per chunk, large dataset")
    parser.add_argument("--repeats", type=int, default=3, help="in-process runs per large folder (median)")
    parser.add_argument("--no-workers", action="store_true", help="in-process runs only")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch_throughput.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="squid-bench-"))
    redis_server = None if args.no_workers else RedisServer(tmp / "redis", persistent=False).start()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        if args.large:
            folders = build_large(tmp / "import" / "large", args.data, args.large)
            results["large"] = {
                "description": f"{args.large} 2048 px 12-bit DICOMs per transfer syntax; the mix is JPEG-LS, "
                "JPEG 2000, RLE and uncompressed",
                "chunk_size": args.large_chunk_size,
                "decode_threads": Settings().decode_threads or "auto",
                **large_runs(folders, tmp, args.large_chunk_size, args.repeats),
            }
            if redis_server is not None:
                mix = folders["jpeg-ls"].parent
                for processes in (1, 2):
                    results["large"][f"mix_workers_{processes}"] = on_workers(
                        mix, tmp / f"w{processes}-large", redis_server.url, processes, args.large_chunk_size
                    )
        if args.small:
            build_bulk_tree(tmp / "import" / "small", args.data, args.small)
            folder = tmp / "import" / "small"
            runs = {"in_process": in_process(folder, tmp / "out-small", args.chunk_size, SquidRuntime())}
            if redis_server is not None:
                for processes in (1, 2):
                    runs[f"workers_{processes}"] = on_workers(
                        folder, tmp / f"w{processes}-small", redis_server.url, processes, args.chunk_size
                    )
            results["small"] = {
                "description": f"{args.small} ZhangLab 224 px chest X-rays: half JPEG, half 12-bit DICOM",
                "chunk_size": args.chunk_size,
                **runs,
            }
            print("small", {run: values["files_per_s"] for run, values in runs.items()}, flush=True)
    finally:
        if redis_server is not None:
            redis_server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "benchmark": "batch_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "2 shared cores: compare runs within this file only",
        },
        "model": SquidRuntime().metadata.model_version,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
