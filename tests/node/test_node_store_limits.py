"""What an oversized or unstorable C-STORE costs the node (issue 25, defects 3 and 4).

A 300 MB instance against a 50 MB association limit, sent by dcmtk's storescu, must be refused without
the node holding it in memory; a 60 MB instance on a 40 MB spool (a real size-limited tmpfs, mounted
in a user namespace for the node alone, or a file size limit where that is not allowed) must leave
no half-written file behind, so the next instance is stored.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.jobs.jobs_support import wait_for
from tests.node.node_peers import instances, large_instance, peak_rss_mb, store
from tests.node.orthanc_support import NODE_AE, NodeProcess

pytestmark = pytest.mark.timeout(600)

STORESCU = shutil.which("storescu")
WAIT_S = 120.0


def can_mount_in_a_user_namespace() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"]
    return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0


def storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    assert STORESCU is not None
    command = [STORESCU, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(port), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu not installed (scripts/test.sh installs it)")
def test_a_refused_300_mb_instance_costs_the_node_a_few_times_the_limit(
    tmp_path: Path, launch_node: Callable[..., NodeProcess], dx_file: Path
) -> None:
    big = large_instance(dx_file, tmp_path / "big.dcm", 300)
    node = launch_node(SQUID_DICOM_MAX_ASSOCIATION_MB="50")
    assert node.process is not None
    before = peak_rss_mb(node.process.pid)
    storescu(node.port, big)
    grown = peak_rss_mb(node.process.pid) - before
    assert grown < 3 * 50, f"the node's peak memory grew by {grown:.0f} MB for a refused instance"
    too_large = {"outcome": "rejected", "reason": "association_too_large"}
    assert node.metric("squid_node_instances_total", too_large) == 1
    assert not node.spool_files("incoming") and not node.spool_files("scoring")
    wait_for(lambda: not list((node.workdir / "spool" / "tmp").iterdir()), WAIT_S, "spool/tmp emptied")
    assert store(node.port, instances(dx_file, 1)) == [0]


def small_spool(spool: Path) -> tuple[list[str], Path]:
    """A command prefix under which the node's spool holds at most 40 MB, and the spool as the node
    sees it. A tmpfs of that size mounted in a user namespace for the node alone where the kernel
    allows it (a disk that fills up), else a 40 MB file size limit (RLIMIT_FSIZE: a file that cannot
    grow); either way the large instance cannot be written."""
    if can_mount_in_a_user_namespace():
        mount = 'mount -t tmpfs -o size=40m tmpfs "$1" && shift && exec "$@"'
        return ["unshare", "-rm", "sh", "-c", mount, "sh", str(spool)], Path(
            "/proc/{pid}/root", *spool.parts[1:]
        )
    limit = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (40 << 20,) * 2); "
    return [sys.executable, "-c", limit + "os.execv(sys.argv[1], sys.argv[1:])"], spool


def test_a_full_spool_keeps_no_half_written_file_and_stores_the_next_instance(
    tmp_path: Path, launch_node: Callable[..., NodeProcess], dx_file: Path
) -> None:
    spool = tmp_path / "small-disk"
    spool.mkdir()
    prefix, view = small_spool(spool)
    node = launch_node(prefix, SQUID_DICOM_SPOOL_DIR=str(spool))
    assert node.process is not None
    inside = Path(str(view).format(pid=node.process.pid))  # the spool as the node sees it
    big = dcmread(large_instance(dx_file, tmp_path / "big.dcm", 60))  # more than the spool takes
    assert store(node.port, [big]) != [0]
    wait_for(lambda: not list((inside / "tmp").iterdir()), WAIT_S, "the half-written file removed")
    assert store(node.port, instances(dx_file, 1)) == [0]
    assert node.metric("squid_node_instances_total", {"outcome": "stored"}) == 1
