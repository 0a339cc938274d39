"""The run folder: one training per folder (the lock), the stop request, atomic checkpoints, what a
resume starts from, the log, and clean-up after a kill. :mod:`.train` keeps the loop.

A run folder holds ``model.pt`` (the model file, written at the end), ``checkpoint.pt`` (and the one before
it, ``checkpoint.prev.pt``), ``config.json`` (the settings), ``run.json`` (the cases and the starting model:
what a training killed before its first checkpoint restarts from), ``log.jsonl`` (every progress event) and,
while a training runs, ``.lock``. Only one process writes here: the single process, or rank 0 of a
distributed training.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Dict, Optional

from .atomicio import PARTIAL_MARK, write_text_atomic
from .config import TrainConfig
from .errors import InputError
from .manifest import Manifest, manifest_to_dict, parse_manifest
from .modelfile import load_trusted_data, save_atomic

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MODEL_NAME = "model.pt"
VALIDATION_NAME = "validation.json"  # --validate K: the held-out cases' Dice
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
RUN_NAME = "run.json"
CHECKPOINT_FORMAT = "semisupseg-checkpoint"
RUN_FORMAT = "semisupseg-run"


class TrainingLock:
    """One training per output folder.

    ``.lock`` holds the owner's pid (for the message). Where the operating system offers ``flock`` the
    lock is the kernel's: it ends with the process however the process ends (SIGKILL, a crash, a power
    cut), so a lock left by a dead training is taken over, and a reused pid can never keep a folder locked.
    Elsewhere (Windows, file systems without locks) the pid decides: a lock whose process is gone is stale.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None

    def __enter__(self):
        if fcntl is not None and self._acquire_flock():
            return self
        self._acquire_pidfile()
        return self

    def _cannot_write(self, error: OSError):
        return InputError(f"Cannot write into the output folder {self.folder} ({error.strerror}); choose a "
                          f"folder you can write to.")

    def _refuse(self, owner: Optional[int]):
        who = f" (process {owner})" if owner else ""
        return InputError(f"The folder {self.folder} is in use by a training that is still running{who}; wait "
                          f"for it, cancel it, or choose another output folder.")

    def _acquire_flock(self) -> bool:
        """Takes the kernel lock; False when this file system has none (then the pid file decides)."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise self._cannot_write(e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise self._refuse(self._owner()) from None
                return False  # ENOLCK, EOPNOTSUPP...: no locks on this file system
            try:  # the holder may have removed the file between our open and our lock: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return True
        raise InputError(f"Cannot take the lock {self.path}; remove it if no training runs there.")

    def _acquire_pidfile(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise self._refuse(owner) from None
                try:
                    os.remove(self.path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise self._cannot_write(e) from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise InputError(f"Cannot take the lock {self.path}; remove it if no training runs there.")

    def _owner(self) -> Optional[int]:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.remove(self.path)  # while still holding the lock, so no one else's lock is removed
            except OSError:
                pass
            os.close(self._fd)  # releases the kernel lock
            self._fd = None
        elif self._owner() == os.getpid():
            os.remove(self.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (never signals it: on Windows ``os.kill(pid, 0)`` would stop it)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """Set by SIGINT/SIGTERM (in the main thread), by the caller's cancel event or by a stop file; checked at
    every iteration boundary (training) or window batch (segmenting).

    The stop file is for callers that cannot send a signal (a Windows process, a job on another machine of
    the cluster): ``touch PATH`` asks the job to stop as SIGTERM would. The job removes the file when it has
    acted on it (:meth:`consume`), so that ``--resume`` with the same ``--stop-file`` does not stop at once.
    """

    def __init__(self, event: Optional[threading.Event] = None, stop_file: Optional[str] = None):
        self.event = event or threading.Event()
        self.stop_file = os.path.abspath(stop_file) if stop_file else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set() or (self.stop_file is not None and os.path.exists(self.stop_file))

    def consume(self) -> None:
        """Removes the stop file once the job stopped because of it (best effort: it may be read-only)."""
        if self.stop_file is not None:
            try:
                os.remove(self.stop_file)
            except OSError:
                pass


CHECKPOINT_KEYS = ("iteration", "weights_a", "weights_b", "optimizer_a", "optimizer_b", "rng_numpy", "rng_torch",
                   "rng_generator", "config", "manifest")


def _newest_checkpoint(folder: str):
    """(the newest complete checkpoint or None, why newer files were skipped)."""
    problems = []
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        try:
            data = load_trusted_data(path, "checkpoint")
        except InputError:
            problems.append(f"{path} is truncated or damaged")
            continue
        missing = [k for k in CHECKPOINT_KEYS if k not in data]
        if data.get("format") != CHECKPOINT_FORMAT or missing:
            problems.append(f"{path} is not a complete SemiSupSeg checkpoint")
            continue
        data["_path"], data["_skipped"] = path, problems
        return data, problems
    return None, problems


def load_checkpoint(folder: str) -> Dict[str, Any]:
    """The newest usable checkpoint of ``folder``: ``checkpoint.pt``, or ``checkpoint.prev.pt`` when the newest
    is missing, truncated or incomplete (a machine that died mid-write, a full disk).

    The returned dict carries ``"_path"`` (the file used) and ``"_skipped"`` (why newer ones were not).
    """
    data, problems = _newest_checkpoint(folder)
    if data is None:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise InputError(f"The folder {folder} has no usable checkpoint to resume from{detail}; start a new "
                         f"training instead.")
    return data


def resume_point(folder: str) -> Dict[str, Any]:
    """What ``train --resume`` continues from: ``{"checkpoint", "config", "manifest", "init_model", "note"}``.

    The newest usable checkpoint when there is one. A training killed before its first checkpoint (or whose
    checkpoints are all damaged) starts again from iteration 0 with the settings and cases that the folder
    records (``checkpoint`` is then None and ``note`` says why), so nobody has to retype the command.
    """
    data, problems = _newest_checkpoint(folder)
    if data is not None:
        note = ""
        if problems:
            note = (f" The newest checkpoint could not be used ({'; '.join(problems)}), so training continues "
                    f"from {data['_path']}.")
        return {"checkpoint": data, "config": TrainConfig.from_dict(data["config"]),
                "manifest": parse_manifest(data["manifest"], data["manifest_path"]), "init_model": None,
                "note": note}
    why = f" ({'; '.join(problems)})" if problems else ""
    record = load_run_record(folder, why)
    record["checkpoint"] = None
    record["note"] = (f" No usable checkpoint{why or ' yet'}: the training starts again from iteration 0 with the "
                      f"settings and cases recorded in {folder}.")
    return record


def write_checkpoint(folder: str, payload: Dict[str, Any]) -> str:
    """Writes ``checkpoint.pt`` so that one complete checkpoint exists at every moment.

    The new checkpoint goes to a temporary file first (flushed to disk); only then does the current one
    become ``checkpoint.prev.pt`` and the new one take its name (both renames are atomic). A kill, a
    power cut or a second Ctrl+C at any point leaves the old checkpoint, the new one, or both.
    """
    path = os.path.join(folder, CHECKPOINT_NAME)
    save_atomic(payload, path, previous=os.path.join(folder, PREVIOUS_CHECKPOINT_NAME))
    return path


def remove_partial_files(folder: str) -> None:
    """Temporary files of a training that was killed mid-write (we hold the folder's lock)."""
    ours = ("checkpoint", "model", CONFIG_NAME, RUN_NAME, LOG_NAME, VALIDATION_NAME)
    for name in os.listdir(folder):
        if PARTIAL_MARK in name and name.lstrip(".").startswith(ours):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass


def trim_log(path: str, iteration: int) -> None:
    """On resume: drops the log's events after the checkpoint's iteration (they are run again)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(event, dict) and int(event.get("iteration") or 0) <= iteration:
                kept.append(json.dumps(event) + "\n")
    write_text_atomic(path, "".join(kept))


@contextlib.contextmanager
def disk_errors(folder: str, what: str):
    """A full disk or a folder that became read-only, in one sentence (the previous checkpoint is kept)."""
    try:
        yield
    except OSError as e:
        raise InputError(f"Cannot write {what} into {folder} ({e.strerror or e}); free disk space or check the "
                         f"folder, then continue with 'semisupseg train --resume {folder}'.") from None


def remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


# ------------------------------------------------------------------------------- what a run starts from

def write_run_record(folder: str, config: TrainConfig, manifest: Manifest, init_model: Optional[str]) -> None:
    """``config.json`` (the settings) and ``run.json`` (the cases as resolved, the starting model): written
    before the first iteration, so that a training killed before its first checkpoint can be resumed."""
    write_text_atomic(os.path.join(folder, CONFIG_NAME), json.dumps(config.to_dict(), indent=2))
    record = {"format": RUN_FORMAT, "manifest": manifest_to_dict(manifest), "manifest_path": manifest.path or "",
              "init_model": os.path.abspath(init_model) if init_model else None}
    write_text_atomic(os.path.join(folder, RUN_NAME), json.dumps(record, indent=2))


def load_run_record(folder: str, why: str) -> Dict[str, Any]:
    """The settings, manifest and starting model that ``folder`` records (for a restart from iteration 0).

    ``why`` says why no checkpoint could be used; it ends the error when the record is missing or damaged.
    """
    try:
        with open(os.path.join(folder, CONFIG_NAME), encoding="utf-8") as f:
            config = TrainConfig.from_dict(json.load(f))
        with open(os.path.join(folder, RUN_NAME), encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format") != RUN_FORMAT:
            raise ValueError(record.get("format"))
        manifest = parse_manifest(record["manifest"], record.get("manifest_path") or os.path.join(folder, RUN_NAME))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
        raise InputError(f"The folder {folder} has no usable checkpoint to resume from{why} and no complete "
                         f"record of its settings and cases ({CONFIG_NAME}, {RUN_NAME}); start a new training "
                         f"instead.") from None
    return {"config": config, "manifest": manifest, "init_model": record.get("init_model")}


class CheckpointClock:
    """When to write a checkpoint: every ``checkpoint_every`` iterations and at least every
    ``checkpoint_minutes`` minutes (0: by iterations only), so that a kill loses at most the smaller of the two."""

    def __init__(self, every: int, minutes: float, clock=time.monotonic):
        self.every, self.seconds, self.clock = every, 60.0 * minutes, clock
        self.last = clock()

    def counts(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def time_is_up(self) -> bool:
        return self.seconds > 0 and self.clock() - self.last >= self.seconds

    def written(self) -> None:
        self.last = self.clock()
