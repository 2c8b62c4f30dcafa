"""Batch scoring throughput (files/s): in-process, 1 worker process and 2 worker processes, in one run.

Two datasets of real chest X-rays: ``small`` (ZhangLab 224 px images, half JPEG, half 12-bit DICOM
in both photometric interpretations) and ``large`` (2048 px 12-bit DICOMs, JPEG-LS, JPEG 2000, RLE
and uncompressed, the size of real radiographs). Each is scored by ``run_inprocess`` (what
``squid batch`` does without a broker) and by a job on ``squid worker --concurrency 1`` and
``--concurrency 2`` (a private redis-server; onnxruntime threads = cores / processes). The resume
cache is bypassed (a fresh key prefix per run), so every file is really scored.

Per-file breakdown (ms): read (file bytes + content hash), decode, preprocess, inference (the
chunk's batched call shared out per file) and write (chunk file; in-process also the final result
files), summed over the processes that did the work, so with 2 processes the sum of the stages
exceeds the wall-clock time per file. ``files_per_s`` is wall clock: from submission to the job's
end as the client saw it, including planning and publishing.

Usage: ``python bench/batch_throughput.py [--small 240] [--large 24] [--chunk-size 32]``
"""

from __future__ import annotations

import argparse
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

import numpy as np
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.runtime import SquidRuntime  # noqa: E402
from service.jobs.inprocess import run_inprocess  # noqa: E402
from service.jobs.manager import JobError, JobManager  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.dicom_factory import make_dicom  # noqa: E402
from tests.jobs.jobs_support import RedisServer, job_env, start_worker  # noqa: E402
from tests.jobs.pacs_tree import build_bulk_tree  # noqa: E402

STAGES = ("read", "decode", "preprocess", "inference", "write")
LARGE_SYNTAXES = (JPEGLSLossless, JPEG2000Lossless, RLELossless, None)


def build_large(root: Path, data: Path, count: int) -> None:
    sources = sorted((data / "zhanglab-224" / "train" / "NORMAL").glob("*.jpeg"))
    noise = np.random.default_rng(0)
    for index in range(count):
        image = Image.open(sources[index]).convert("L").resize((2048, 2048), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint16) * 16 + noise.integers(0, 8, (2048, 2048)).astype(
            np.uint16
        )
        syntax = LARGE_SYNTAXES[index % len(LARGE_SYNTAXES)]
        kwargs: dict[str, Any] = {"transfer_syntax": syntax} if syntax else {}
        folder = root / f"S{index // 8:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IM{index:04d}").write_bytes(make_dicom(pixels, bits_stored=12, **kwargs))


def in_process(folder: Path, out: Path, chunk_size: int) -> dict[str, Any]:
    settings = Settings(chunk_size=chunk_size)
    runtime = SquidRuntime()
    runtime.warmup()
    started = time.perf_counter()
    summary = run_inprocess(folder, out, settings, runtime=runtime, resume=False)
    seconds = time.perf_counter() - started
    return {
        "files": summary.total,
        "seconds": round(seconds, 3),
        "files_per_s": round(summary.total / seconds, 2),
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=240, help="files in the 224 px dataset")
    parser.add_argument("--large", type=int, default=24, help="files in the 2048 px dataset")
    parser.add_argument("--chunk-size", type=int, default=32, help="files per chunk, small dataset")
    parser.add_argument("--large-chunk-size", type=int, default=4, help="files per chunk, large dataset")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch_throughput.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="squid-bench-"))
    redis_server = RedisServer(tmp / "redis", persistent=False).start()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        datasets = {}
        if args.small:
            build_bulk_tree(tmp / "import" / "small", args.data, args.small)
            datasets["small"] = f"{args.small} ZhangLab 224 px chest X-rays: half JPEG, half 12-bit DICOM"
        if args.large:
            build_large(tmp / "import" / "large", args.data, args.large)
            datasets["large"] = f"{args.large} 2048 px 12-bit DICOMs (JPEG-LS, JPEG 2000, RLE, uncompressed)"
        for name in datasets:
            folder = tmp / "import" / name
            chunk = args.chunk_size if name == "small" else args.large_chunk_size
            runs = {"in_process": in_process(folder, tmp / f"out-{name}", chunk)}
            for processes in (1, 2):
                runs[f"workers_{processes}"] = on_workers(
                    folder, tmp / f"w{processes}-{name}", redis_server.url, processes, chunk
                )
            results[name] = {"description": datasets[name], "chunk_size": chunk, **runs}
            print(name, {run: values["files_per_s"] for run, values in runs.items()}, flush=True)
    finally:
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
