"""Looking at processes in /proc without racing them: a process may end between any two reads, so each file is read
once, and a file that is gone (or a process that exits while it is read) means the process is gone."""

from __future__ import annotations

from pathlib import Path


def read_proc(pid: int, name: str) -> bytes | None:
    """`/proc/PID/NAME`, or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # FileNotFoundError, or ESRCH/EACCES from a process that is exiting
        return None


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process (neither gone nor a zombie) on this Linux machine."""
    status = read_proc(pid, "status") if pid is not None else None
    return status is not None and b"State:\tZ" not in status
