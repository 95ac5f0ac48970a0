"""Files and folders autocnn writes: whole or not at all, and what a killed process left half-done
removed by the next one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # no space left; over the user's disk quota


def write_text_atomically(path: Path, text: str) -> None:
    """Written beside the target, then renamed over it: an editor or a crash never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_leftovers(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders `<prefix><pid>-...` in `parent` whose process is gone: what a download or
    an export killed mid-way (kill -9, a power cut) left behind. A live process's folder is kept."""
    import shutil

    removed = []
    for path in parent.glob(f"{prefix}*") if parent.is_dir() else []:
        pid = path.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def disk_full(exc: BaseException) -> OSError | None:
    """The "no space left" error behind `exc`: itself, or what it was raised from or during
    (torch.save reports a full disk as a RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL:
            return current
        current = current.__cause__ or current.__context__
    return None
