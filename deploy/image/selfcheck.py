"""Build-stage check of the image's environment: what ``squid serve``, ``squid worker`` and the DICOM
decoders need at run time, checked right after the environment is installed and pruned.

A dependency missing from pyproject.toml, a file the prune removed but something loads, a model the
non-root runtime user cannot read, or torch sneaking in through a dependency then fails the image
build instead of the first request. Run with the environment's interpreter from the build context
(a script, so the source tree in the working folder does not shadow the installed packages):

    /opt/squid/bin/python -B deploy/image/selfcheck.py [--provider P] SAMPLE...

Exit status 0 when every check passes; otherwise each failure on one line, and 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# The compressed transfer syntaxes a modality or PACS sends; each needs a decoder plugin installed.
COMPRESSED_SYNTAXES = (
    "JPEGBaseline8Bit",
    "JPEGExtended12Bit",
    "JPEGLossless",
    "JPEGLosslessSV1",
    "JPEGLSLossless",
    "JPEGLSNearLossless",
    "JPEG2000Lossless",
    "JPEG2000",
    "RLELossless",
)
# What the service never loads: the training stack, test runners, build tools.
ABSENT_MODULES = ("torch", "pytest", "pip", "setuptools")


def installed_packages_are_used() -> None:
    for name in ("model", "service", "cli"):
        origin = Path(importlib.import_module(name).__file__ or "")
        if not origin.is_relative_to(sys.prefix):
            raise AssertionError(f"{name} imported from {origin}, not from the environment {sys.prefix}")


def nothing_unneeded_is_installed() -> None:
    present = [name for name in ABSENT_MODULES if importlib.util.find_spec(name) is not None]
    if present:
        raise AssertionError(f"the image must not contain {present}")


def everything_is_readable_by_the_runtime_user() -> None:
    """The runtime runs as uid 10001, not the owner: files need o+r, folders o+rx."""
    unreadable = []
    for folder, dirs, files in os.walk(sys.prefix):
        for name in dirs + files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
            if mode & needed != needed:
                unreadable.append(str(path))
    if unreadable:
        raise AssertionError(f"not readable by other users: {unreadable[:5]} ({len(unreadable)} in all)")


def console_script_runs() -> None:
    """``squid`` (what compose runs) starts and offers the serving commands."""
    script = Path(sys.prefix, "bin", "squid")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not all(word in done.stdout for word in ("serve", "worker", "score")):
        raise AssertionError(f"{script} --help failed ({done.returncode}): {done.stdout}{done.stderr}")


def api_and_worker_import() -> None:
    from service.app import create_app

    create_app()
    importlib.import_module("service.jobs.tasks")
    importlib.import_module("service.jobs.worker")


def dicom_decoders_are_available() -> None:
    from pydicom import uid
    from pydicom.pixels import get_decoder

    missing = [name for name in COMPRESSED_SYNTAXES if not get_decoder(getattr(uid, name)).is_available]
    if missing:
        raise AssertionError(f"no decoder plugin for {missing}")


def make_sample_check(samples: list[Path], provider: str | None) -> Callable[[], None]:
    def shipped_model_scores_the_samples() -> None:
        import onnxruntime

        from model.runtime import SquidRuntime
        from model.steps import infer, prepare

        if provider and provider not in onnxruntime.get_available_providers():
            raise AssertionError(f"{provider} not in {onnxruntime.get_available_providers()}")
        runtime = SquidRuntime(intra_op_threads=1)
        prepared = [prepare(path.read_bytes(), runtime.preprocessing, 100_000_000) for path in samples]
        results, _ = infer(runtime, prepared)
        for path, result in zip(samples, results, strict=True):
            if not (math.isfinite(result.score) and 0.0 <= result.score <= 1.0):
                raise AssertionError(f"{path.name}: score {result.score}")
            print(f"selfcheck: {path.name} score={result.score:.6f}")

    return shipped_model_scores_the_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="+", type=Path, help="images the shipped model must score")
    parser.add_argument("--provider", help="an onnxruntime execution provider the image must offer")
    args = parser.parse_args(argv)
    checks = [
        installed_packages_are_used,
        nothing_unneeded_is_installed,
        everything_is_readable_by_the_runtime_user,
        console_script_runs,
        api_and_worker_import,
        dicom_decoders_are_available,
        make_sample_check(args.samples, args.provider),
    ]
    failures = 0
    for check in checks:
        try:
            check()
        except Exception as exc:  # every failure is reported, not only the first
            failures += 1
            print(f"selfcheck FAILED {check.__name__}: {exc}", file=sys.stderr)
    print(f"selfcheck: {len(checks) - failures}/{len(checks)} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
