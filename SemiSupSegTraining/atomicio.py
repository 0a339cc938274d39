"""Atomic file writes: a reader, a crash or a power cut sees the old file or the new one, never half of one.

Every file the engine writes goes through :func:`atomic_write`: the new content is written under a temporary
name in a private folder beside the target (``.NAME.partialXXXX/NAME``, on the same file system, so that the
rename is atomic), flushed to disk with fsync, renamed over the target with ``os.replace``, and the folder's
entry is flushed too where the OS allows it. On any exception, Ctrl+C included, the temporary folder goes
and the old file stays as it was.

Plain Python only: the Slicer module imports :mod:`.modelinfo`, which writes through here, without torch.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

PARTIAL_MARK = ".partial"  # temporary folders are .NAME.partialXXXX until their file is renamed into place


def fsync_folder(folder: str) -> None:
    """Flushes a folder's entries (a rename into it) to disk; skipped on Windows, which cannot open one."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network, FUSE) do not flush folders
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows flushes writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None], previous: Optional[str] = None) -> str:
    """Writes ``path`` atomically; returns its absolute path.

    ``write(temporary_path)`` writes the new file; ``temporary_path`` has ``path``'s own name (its ending
    picks the format of writers such as SimpleITK) inside a temporary folder beside it. A writer that makes two
    files (``.mhd`` with its ``.raw``) names the data file by its final name: every file is moved, the named
    one last. ``previous``: the current file, if any, is first renamed to this name (kept as a fallback).
    """
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{name}{PARTIAL_MARK}", dir=folder)
    try:
        write(os.path.join(tmp_dir, name))
        written = sorted(os.listdir(tmp_dir), key=lambda n: n == name)
        if name not in written:
            raise OSError(f"the writer left no file named {name}")
        for entry in written:
            _fsync_file(os.path.join(tmp_dir, entry))
        if previous is not None and os.path.exists(path):
            os.replace(path, previous)
        for entry in written:
            os.replace(os.path.join(tmp_dir, entry), os.path.join(folder, entry))
        fsync_folder(folder)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def write_text_atomic(path: str, text: str) -> str:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns its absolute path."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json_atomic(path: str, data: Any, indent: int = 2) -> str:
    """Writes ``data`` as indented JSON and a final newline to ``path`` atomically; returns its path."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def is_partial(name: str) -> bool:
    """Whether a folder entry is a temporary left by a write that was killed before its rename."""
    return name.startswith(".") and PARTIAL_MARK in name
