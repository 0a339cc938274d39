"""A long engine job (training or segmentation) as a small state machine around a background process.

States::

    idle -> starting -> running -> importing -> done
                \\          \\-> failed / cancelled
                 \\-> failed / cancelled

``starting``: the process was launched, the engine has not reported yet (Python and torch are loading);
``running``: the engine reported its first event; ``importing``: the process ended well and the result is
being brought in (``importer``); then ``done``, ``failed`` or ``cancelled``.

The process is run by a *runner* (injectable: tests pass a fake one, Slicer passes one that uses
``slicer.util.launchConsoleProcess``). A reader thread puts each output line into a queue; :meth:`Job.poll`
drains it in the caller's thread (a ``qt.QTimer`` in the GUI, a loop in :meth:`Job.wait`), so every
callback runs in that thread.

Cancel works the same on every platform: with a ``stop_file`` (the module always gives one) it first
creates that file, which the engine checks at each iteration boundary (it writes a checkpoint, sends a
``cancelled`` event and exits with code 3: a clean cancel); output keeps being read meanwhile. Only when the
process still runs ``stop_grace_s`` seconds later is the process tree terminated (SIGTERM; on Windows
TerminateProcess, where no handler runs and the last minutes of training are lost), and killed after
``grace_s`` more. Without a stop file, cancel terminates at once.
"""

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from .progress import ProgressEvent, parse_line

IDLE = "idle"
STARTING = "starting"
RUNNING = "running"
IMPORTING = "importing"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)

_TRANSITIONS = {
    IDLE: (STARTING, FAILED, CANCELLED),
    STARTING: (RUNNING, IMPORTING, FAILED, CANCELLED),
    RUNNING: (IMPORTING, FAILED, CANCELLED),
    IMPORTING: (DONE, FAILED),
    DONE: (),
    FAILED: (),
    CANCELLED: (),
}

#: Exit codes of the engine.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3

#: Seconds between terminating the process tree and killing what still runs.
DEFAULT_GRACE_S = 15.0
#: Seconds the engine gets to honour the stop file (finish the iteration, write a checkpoint) before the
#: process tree is terminated. One training iteration of the paper preset on a CPU takes a few seconds.
DEFAULT_STOP_GRACE_S = 30.0


def request_stop(stop_file: str) -> None:
    """Creates the stop file (and its folder); the engine stops when it sees it."""
    folder = os.path.dirname(os.path.abspath(stop_file))
    os.makedirs(folder, exist_ok=True)
    with open(stop_file, "w", encoding="utf-8") as f:
        f.write("stop requested by the SemiSupSeg module\n")


def clear_stop(stop_file: Optional[str]) -> None:
    """Removes a stop file left by an earlier run, so that a new run does not stop at once."""
    if stop_file and os.path.exists(stop_file):
        os.remove(stop_file)


def resumable(job: "Job") -> bool:
    """Whether a finished job can be resumed: a training cancelled after writing a checkpoint."""
    return job.state == CANCELLED and bool(job.checkpoint)


def finish_detached(jobs: Sequence["Job"], timeout_s: float, interval_s: float = 0.1,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Polls cancelled jobs until they have ended (a training writes its checkpoint, its ``cleanup`` records it
    for Resume and removes what it should) for at most ``timeout_s``; what still runs then is killed (a second
    cancel). For quitting Slicer or reloading the module, when no timer will poll them any more."""
    deadline = clock() + timeout_s
    while any(not job.poll() for job in jobs) and clock() < deadline:
        sleep(interval_s)
    for job in jobs:
        if not job.finished:
            job.cancel()


def work_folder_cleanup(folder: str, keep: bool = False) -> Callable[["Job"], None]:
    """A ``cleanup`` that removes a job's temporary folder (the exported cases, the stop file) on every
    outcome except a resumable cancel, whose resume reads the cases from it; ``keep``: never remove."""
    def clean(job: "Job") -> None:
        if not keep and not resumable(job):
            shutil.rmtree(folder, ignore_errors=True)
    return clean


# ---------------------------------------------------------------------------------------------------------
# Running a process


def popen_arguments(env_updates: Optional[Dict[str, str]], cwd: Optional[str],
                    base_env: Optional[Dict[str, str]] = None, os_name: str = os.name) -> Dict:
    """The keyword arguments of :class:`subprocess.Popen` for the engine: output read as UTF-8 (what the
    engine writes) with undecodable bytes replaced, never in the system's code page; stderr into stdout; no
    console window on Windows; the environment ``base_env`` (Slicer's startup environment; default this
    process's) with ``env_updates``."""
    env = dict(os.environ if base_env is None else base_env)
    env.update(env_updates or {})
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                  encoding="utf-8", errors="replace", bufsize=1, env=env, cwd=cwd)
    if os_name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
    return kwargs


class ProcessHandle:
    """A started process: a reader thread feeds ``("line", text)`` items and finally ``("exit", code)``."""

    def __init__(self, proc, sink: Callable[[tuple], None]):
        self.proc = proc
        self.pid = proc.pid
        self._sink = sink
        self._kill_timer: Optional[threading.Timer] = None
        self._tree: List = []
        self.thread = threading.Thread(target=self._read, name=f"engine-output-{self.pid}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                break
            if not line:
                break
            self._sink(("line", line.rstrip("\r\n")))
        code = self.proc.wait()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._sink(("exit", code))

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def _process_tree(self) -> List:
        """The process and all its descendants (psutil objects), children first; [] without psutil."""
        try:
            import psutil
        except ImportError:
            return []
        try:
            parent = psutil.Process(self.pid)
            return parent.children(recursive=True)[::-1] + [parent]
        except psutil.Error:
            return []

    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """SIGTERM to the whole tree now (PythonSlicer is a launcher: the engine is its child), then a
        kill of whatever still runs after ``grace_s`` seconds."""
        self._tree = self._process_tree() or self._tree
        if self._tree:
            for process in self._tree:
                try:
                    process.terminate()
                except Exception:  # psutil.NoSuchProcess, AccessDenied
                    pass
        else:
            try:
                if os.name == "nt":
                    self.proc.terminate()
                else:
                    self.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
        if self._kill_timer is None:
            self._kill_timer = threading.Timer(grace_s, self.kill)
            self._kill_timer.daemon = True
            self._kill_timer.start()

    def kill(self) -> None:
        """Kills the process and every descendant that is still running."""
        tree = self._process_tree() or []
        known = {p.pid for p in tree}
        tree += [p for p in self._tree if p.pid not in known]
        for process in tree:
            try:
                if process.is_running():
                    process.kill()
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass


class SubprocessRunner:
    """Starts a command with :class:`subprocess.Popen` (:func:`popen_arguments`: UTF-8 with replacement, no
    console window, ``base_env`` plus the job's variables) and reads its output on a thread. The same runner
    serves Slicer (``base_env`` = ``slicer.util.startupEnvironment()``) and the tests; ``popen`` replaces the
    launch (``popen(command, **kwargs)``)."""

    def __init__(self, base_env: Optional[Dict[str, str]] = None, popen: Optional[Callable] = None):
        self.base_env = base_env
        self.popen = popen or subprocess.Popen

    def start(self, command: Sequence[str], env_updates: Optional[Dict[str, str]], cwd: Optional[str],
              sink: Callable[[tuple], None]) -> ProcessHandle:
        return ProcessHandle(self.popen(list(command), **popen_arguments(env_updates, cwd, self.base_env)), sink)


# ---------------------------------------------------------------------------------------------------------
# The job


class Job:
    """One engine run. Callbacks (called from :meth:`start` and :meth:`poll`, in the caller's thread):

    - ``on_state(job)`` after each state change (``job.state`` is the new state),
    - ``on_event(event)`` for each engine event (:class:`ProgressEvent`),
    - ``on_log(line)`` for each output line that is not an event,
    - ``importer(job)`` once the process ended well; it brings the result in (exceptions: ``failed``);
    - ``cleanup(job)`` once, when the job has finished, whatever the outcome (e.g. :func:`work_folder_cleanup`).
    """

    def __init__(self, command: Sequence[str], runner=None, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None, name: str = "Job",
                 on_state: Optional[Callable[["Job"], None]] = None,
                 on_event: Optional[Callable[[ProgressEvent], None]] = None,
                 on_log: Optional[Callable[[str], None]] = None,
                 importer: Optional[Callable[["Job"], object]] = None,
                 grace_s: float = DEFAULT_GRACE_S, stop_file: Optional[str] = None,
                 stop_grace_s: float = DEFAULT_STOP_GRACE_S, cleanup: Optional[Callable[["Job"], None]] = None,
                 context: Optional[Dict[str, object]] = None):
        self.command = list(command)
        self.runner = runner or SubprocessRunner()
        self.env = env
        self.cwd = cwd
        self.name = name
        self.on_state = on_state
        self.on_event = on_event
        self.on_log = on_log
        self.importer = importer
        self.grace_s = grace_s
        #: The file whose existence asks the engine to stop (the command line's ``--stop-file``).
        self.stop_file = stop_file
        self.stop_grace_s = stop_grace_s
        self.cleanup = cleanup
        self.context = dict(context or {})  # what the caller wants to remember (e.g. the run folder)
        self.detached = False

        self.state = IDLE
        self.states: List[str] = [IDLE]
        self.exit_code: Optional[int] = None
        self.last_progress: Optional[ProgressEvent] = None
        self.start_event: Optional[ProgressEvent] = None
        self.done_event: Optional[ProgressEvent] = None
        self.error_event: Optional[ProgressEvent] = None
        self.cancelled_event: Optional[ProgressEvent] = None
        self.checkpoint: Optional[str] = None
        self.result = None  # what the importer returned
        self.error_message: Optional[str] = None
        self.exception: Optional[BaseException] = None
        self.log_tail = collections.deque(maxlen=40)
        self.cancel_requested = False
        self.terminated = False  # whether the process tree was terminated (the stop file was not honoured)
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self._queue = queue.Queue()  # ("line", text) and finally ("exit", code), from the reader thread
        self._handle = None
        self._terminate_timer: Optional[threading.Timer] = None

    # -- state -------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def active(self) -> bool:
        return self.state in (STARTING, RUNNING, IMPORTING)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.name}: no transition from {self.state} to {state}")
        self.state = state
        self.states.append(state)
        if state in FINISHED_STATES:
            self.finished_at = time.monotonic()
            self._clean_up()
        if self.on_state:
            self.on_state(self)

    def _clean_up(self) -> None:
        cleanup, self.cleanup = self.cleanup, None
        if cleanup is not None:
            try:
                cleanup(self)
            except Exception:  # a cleanup problem must not hide the outcome
                logging.exception("%s: cleaning up failed", self.name)

    def _fail(self, message: str, exception: Optional[BaseException] = None) -> None:
        self.error_message = message
        self.exception = exception
        self._set_state(FAILED)

    # -- control -----------------------------------------------------------------------------------------

    def start(self) -> "Job":
        """Launches the process (state ``starting``); a launch error ends in ``failed``."""
        if self.state != IDLE:
            raise RuntimeError(f"{self.name} was already started")
        self._set_state(STARTING)
        self.started_at = time.monotonic()
        logging.info("%s: %s", self.name, " ".join(self.command))
        try:
            clear_stop(self.stop_file)
            self._handle = self.runner.start(self.command, self.env, self.cwd, self._queue.put)
        except Exception as e:  # FileNotFoundError, PermissionError, ...
            self._fail(f"{self.name} could not start the engine ({self.command[0]}): {e}", e)
        return self

    def cancel(self) -> None:
        """Asks the process to stop: the stop file now, the process tree terminated after ``stop_grace_s``
        if it still runs (at once without a stop file), killed ``grace_s`` later; a second call kills now.
        The state becomes ``cancelled`` when the process has ended (see :meth:`poll`)."""
        if self.finished:
            return
        if self.state == IDLE:
            self._set_state(CANCELLED)
            return
        if self.state == IMPORTING:
            return  # the process is gone already; importing is short
        if self.cancel_requested:
            if self._handle is not None:
                self._handle.kill()
            return
        self.cancel_requested = True
        if self._handle is None:
            return
        if self.stop_file:
            try:
                request_stop(self.stop_file)
            except OSError as e:  # a folder that cannot be written: fall back to terminating
                logging.warning("%s: could not write the stop file %s (%s); terminating.", self.name,
                                self.stop_file, e)
            else:
                self._terminate_timer = threading.Timer(self.stop_grace_s, self._terminate)
                self._terminate_timer.daemon = True
                self._terminate_timer.start()
                return
        self._terminate()

    def detach(self) -> None:
        """Cancels the job and forgets its callbacks and importer (the scene they refer to is closing): the
        process still stops by its stop file and ``cleanup`` still runs, but nothing reaches the scene."""
        self.on_state = self.on_event = self.on_log = None
        self.importer = None
        self.detached = True
        self.cancel()

    def _terminate(self) -> None:
        """Terminates the process tree (kill after ``grace_s``) unless it has ended; may run on a timer thread."""
        handle = self._handle
        if handle is None or self.exit_code is not None or not getattr(handle, "is_running", lambda: True)():
            return
        self.terminated = True
        handle.cancel(self.grace_s)

    def poll(self) -> bool:
        """Handles the output that arrived since the last call; returns whether the job is finished."""
        while not self.finished:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                self._handle_line(value)
            elif kind == "exit":
                self._handle_exit(value)
        return self.finished

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1,
             on_tick: Optional[Callable[[], None]] = None) -> str:
        """Polls until the job is finished (``on_tick`` runs between polls, e.g. to keep a GUI alive);
        returns the final state. Raises TimeoutError after ``timeout`` seconds (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not finish within {timeout} s")
            if on_tick:
                on_tick()
            time.sleep(interval)
        return self.state

    # -- output ------------------------------------------------------------------------------------------

    def _handle_line(self, line: str) -> None:
        event = parse_line(line)
        if event is None:
            if line.strip():
                self.log_tail.append(line)
                if self.on_log:
                    self.on_log(line)
            return
        if event.event in ("start", "progress", "checkpoint") and self.state == STARTING:
            self._set_state(RUNNING)
        if event.event == "start":
            self.start_event = event
        elif event.event == "progress":
            self.last_progress = event
        elif event.event == "checkpoint":
            path = event.get("path")
            self.checkpoint = path if isinstance(path, str) else self.checkpoint
        elif event.event == "done":
            self.done_event = event
        elif event.event == "error":
            self.error_event = event
        elif event.event == "cancelled":
            self.cancelled_event = event
            path = event.get("checkpoint")
            self.checkpoint = path if isinstance(path, str) else self.checkpoint
        if self.on_event:
            self.on_event(event)

    def _handle_exit(self, code: int) -> None:
        self.exit_code = code
        if self._terminate_timer is not None:
            self._terminate_timer.cancel()
        if code == EXIT_OK and (self.done_event is not None or not self.cancel_requested):
            self._set_state(IMPORTING)
            try:
                if self.importer is not None:
                    self.result = self.importer(self)
            except Exception as e:
                logging.exception("%s: importing the result failed", self.name)
                self._fail(f"{self.name} finished, but its result could not be loaded: {e}", e)
                return
            self._set_state(DONE)
        elif self.cancel_requested or code == EXIT_CANCELLED or self.cancelled_event is not None:
            self._set_state(CANCELLED)
        else:
            self._fail(self._failure_message(code))

    def _failure_message(self, code: int) -> str:
        if self.error_event is not None and self.error_event.message:
            return self.error_event.message
        lines = [line.strip() for line in self.log_tail if line.strip()]
        detail = f": {lines[-1]}" if lines else ""
        return f"{self.name} stopped with exit code {code}{detail}"

    # -- reporting ---------------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> Optional[float]:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at
