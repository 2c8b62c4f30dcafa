"""What a failed write to a results folder means: a full disk, or a folder we may not write.

Both are the deployment's problem, not a file's or a worker's: the API answers 503 with one of these
reasons, ``squid batch`` one ``error:`` line, and a worker task backs off and retries before the job
fails with the reason (:func:`service.jobs.tasks.common.retry_storage`). Messages name the error
code and never the path (a client has no business with the server's folders).
"""

from __future__ import annotations

import errno
import os

RESULTS_DISK_FULL = "results_disk_full"
RESULTS_NOT_WRITABLE = "results_not_writable"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_reason(exc: BaseException) -> str | None:
    """``results_disk_full`` / ``results_not_writable`` for such an ``OSError``, else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in DISK_FULL_ERRNOS:
        return RESULTS_DISK_FULL
    if exc.errno in NOT_WRITABLE_ERRNOS:
        return RESULTS_NOT_WRITABLE
    return None


def describe(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: the error without the path it names."""
    if exc.errno is None:
        return type(exc).__name__
    return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"


def check_writable(folder: os.PathLike[str] | str) -> None:
    """Create ``folder`` if needed and prove a file can be created in it; raises ``OSError``."""
    path = os.fspath(folder)
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".squid-write-check-{os.getpid()}")
    with open(probe, "wb"):
        pass
    os.unlink(probe)
