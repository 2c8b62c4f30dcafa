"""``POST /score`` latency and throughput at 1, 4 and 16 concurrent clients vs in-process scoring.

One run, same files, same artifact and thread settings:

- ``inprocess``: ``model.steps.prepare`` + ``infer`` per file in this process, one after the
  other (what a caller embedding the model would do, with no HTTP, no JSON, no batching), without
  the anomaly map; ``inprocess_map`` the same with it;
- ``http-c{1,4,16}``: a real ``squid serve`` subprocess on a free port, driven by C client threads,
  each with its own keep-alive connection, multipart uploads; ``http_c1_heatmap`` one client asking
  for the heatmap (the map computed and drawn as a PNG).

Files: real chest X-rays (ZhangLab JPEGs at 224 px and the scorable real DICOMs of
../shared/data/dicom, cycled). Reported per mode: p50/p95 latency (ms) and throughput (images/s);
``overhead_p50`` = HTTP c=1 p50 / in-process p50 and ``throughput_gain_c16`` = HTTP c=16 throughput /
in-process throughput.

Usage: ``python bench/serve_latency.py [--model ARTIFACT] [--files 64] [--rounds 2] [--threads N]``; writes
bench/results/serve_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "service"))

from http_support import metric_value, serving  # noqa: E402

from model.runtime import SquidRuntime  # noqa: E402
from model.steps import infer, prepare  # noqa: E402

DATA = Path(os.environ.get("SQUID_DATA_DIR", ROOT.parent / "shared" / "data"))
DICOMS = (
    "dicom/fo-dicom/CR-MONO1-10-chest.dcm",
    "dicom/highdicom/dx_image.dcm",
    "dicom/torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "dicom/torchxrayvision/Fake_MONOHR1.dcm",
)
CONCURRENCY = (1, 4, 16)


def load_files(count: int) -> list[bytes]:
    jpegs = sorted((DATA / "zhanglab-224" / "train" / "NORMAL").glob("*.jpeg"))
    dicoms = [DATA / name for name in DICOMS if (DATA / name).is_file()]
    if not jpegs:
        raise SystemExit(f"no ZhangLab images under {DATA} (set SQUID_DATA_DIR)")
    files = []
    for i in range(count):
        if dicoms and i % 4 == 3:  # a quarter DICOM (440 to 1024 px), the rest 224 px JPEG
            files.append(dicoms[(i // 4) % len(dicoms)].read_bytes())
        else:
            files.append(jpegs[i % len(jpegs)].read_bytes())
    return files


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ordered = sorted(latencies_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p95_ms": round(p95 * 1e3, 2),
        "throughput_per_s": round(len(ordered) / wall_s, 2),
    }


def bench_inprocess(
    files: list[bytes], rounds: int, threads: int | None, model: Path | None, with_map: bool
) -> dict[str, float]:
    runtime = SquidRuntime(model, intra_op_threads=threads)
    runtime.warmup()
    latencies = []
    start = time.perf_counter()
    for _ in range(rounds):
        for data in files:
            t0 = time.perf_counter()
            infer(runtime, [prepare(data, runtime.preprocessing, 100_000_000)], with_map)
            latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - start)


def bench_http(
    url: str, files: list[bytes], rounds: int, clients: int, heatmap: bool = False
) -> dict[str, float]:
    work = [data for _ in range(rounds) for data in files]
    shares = [work[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients)

    def run(share: list[bytes]) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=120) as http:
            http.get("/healthz")  # open the keep-alive connection outside the measurement
            barrier.wait()
            for data in share:
                t0 = time.perf_counter()
                response = http.post("/score", files={"file": ("x", data)}, params={"heatmap": heatmap})
                times.append(time.perf_counter() - t0)
                response.raise_for_status()
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, shares))
    wall = time.perf_counter() - start
    return summary([t for times in results for t in times], wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime threads")
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_latency.json")
    args = parser.parse_args()

    files = load_files(args.files)
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
        },
        "model": SquidRuntime(args.model).metadata.model_version,
        "files": len(files),
        "rounds": args.rounds,
        "intra_op_threads": args.threads,
    }
    for mode, with_map in (("inprocess", False), ("inprocess_map", True)):
        results[mode] = bench_inprocess(files, args.rounds, args.threads, args.model, with_map)
        print(mode, results[mode], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = {"SQUID_MODEL_PATH": str(args.model.resolve())} if args.model else {}
        threads = str(args.threads)
        with serving(Path(tmp) / "server.log", SQUID_INTRA_OP_THREADS=threads, **model) as server:
            bench_http(server.url, files[:8], 1, 4)  # warm-up
            for clients in CONCURRENCY:
                results[f"http_c{clients}"] = bench_http(server.url, files, args.rounds, clients)
                print(f"http c={clients}", results[f"http_c{clients}"], flush=True)
            results["http_c1_heatmap"] = bench_http(server.url, files, args.rounds, 1, heatmap=True)
            print("http c=1 heatmap", results["http_c1_heatmap"], flush=True)
            batches = httpx.get(f"{server.url}/metrics").text
    calls = metric_value(batches, "squid_inference_batch_size_count")
    images = metric_value(batches, "squid_inference_batch_size_sum")
    base = results["inprocess"]
    results["mean_server_batch_size"] = round(images / calls, 2) if calls else None
    results["overhead_p50"] = round(results["http_c1"]["p50_ms"] / base["p50_ms"], 2)
    gain = results["http_c16"]["throughput_per_s"] / base["throughput_per_s"]
    results["throughput_gain_c16"] = round(gain, 2)
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
