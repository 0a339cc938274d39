"""The job state machine and its process runner (SemiSupSegLib.job), with a fake runner and with real
small Python processes that print JSON lines like the engine."""

import os
import sys
import textwrap
import time

import pytest
from SemiSupSegLib import job as jobmod
from SemiSupSegLib.job import Job


class FakeHandle:
    def __init__(self, sink):
        self.sink = sink
        self.cancels = 0
        self.kills = 0

    def say(self, *lines):
        for line in lines:
            self.sink(("line", line))

    def exit(self, code):
        self.sink(("exit", code))

    def cancel(self, grace_s):
        self.cancels += 1

    def kill(self):
        self.kills += 1


class FakeRunner:
    def __init__(self, fail=None):
        self.fail = fail
        self.handle = None
        self.started = None

    def start(self, command, env, cwd, sink):
        if self.fail:
            raise self.fail
        self.started = (command, env, cwd)
        self.handle = FakeHandle(sink)
        return self.handle


def _job(**kwargs):
    runner = FakeRunner(kwargs.pop("fail", None))
    seen = {"states": [], "events": [], "logs": []}
    j = Job(["engine", "train"], runner=runner, env={"A": "1"}, name="Training",
            on_state=lambda job: seen["states"].append(job.state), on_event=lambda e: seen["events"].append(e.event),
            on_log=seen["logs"].append, **kwargs)
    return j, runner, seen


def _until_first_progress(job):
    while job.last_progress is None:
        job.poll()
        time.sleep(0.02)


def test_successful_job_goes_through_every_state_and_imports():
    imported = []
    j, runner, seen = _job(importer=lambda job: imported.append(job.done_event.get("model")) or "the result")
    j.start()
    assert j.state == "starting" and runner.started == (["engine", "train"], {"A": "1"}, None)
    runner.handle.say("importing torch...", '{"event": "start", "phase": "train", "total": 2}')
    j.poll()
    assert j.state == "running"
    runner.handle.say('{"event": "progress", "phase": "train", "iteration": 1, "total": 2, "losses": {"loss": 1}}',
                      '{"event": "done", "phase": "train", "model": "out/model.pt"}')
    runner.handle.exit(0)
    assert j.poll() is True
    assert seen["states"] == ["starting", "running", "importing", "done"]
    assert seen["events"] == ["start", "progress", "done"]
    assert seen["logs"] == ["importing torch..."]
    assert imported == ["out/model.pt"] and j.result == "the result"
    assert j.last_progress.iteration == 1 and j.exit_code == 0


def test_engine_error_message_is_kept():
    j, runner, seen = _job()
    j.start()
    runner.handle.say('{"event": "error", "message": "Manifest m.json: case x has no image.", "exit_code": 2}')
    runner.handle.exit(2)
    j.poll()
    assert seen["states"] == ["starting", "failed"]
    assert j.error_message == "Manifest m.json: case x has no image."


def test_crash_without_event_reports_the_last_output_line():
    j, runner, _ = _job()
    j.start()
    runner.handle.say("Traceback (most recent call last):", "MemoryError: out of memory")
    runner.handle.exit(1)
    j.poll()
    assert j.state == "failed"
    assert j.error_message == "Training stopped with exit code 1: MemoryError: out of memory"


def test_importer_failure_fails_the_job():
    def importer(job):
        raise OSError("seg.nrrd is missing")
    j, runner, seen = _job(importer=importer)
    j.start()
    runner.handle.exit(0)
    j.poll()
    assert seen["states"] == ["starting", "importing", "failed"]
    assert "seg.nrrd is missing" in j.error_message and isinstance(j.exception, OSError)


def test_cancel_asks_once_then_kills():
    j, runner, seen = _job()
    j.start()
    j.cancel()
    j.cancel()
    assert runner.handle.cancels == 1 and runner.handle.kills == 1
    runner.handle.say('{"event": "cancelled", "message": "Stopped.", "checkpoint": "out/checkpoint.pt"}')
    runner.handle.exit(3)
    j.poll()
    assert seen["states"] == ["starting", "cancelled"] and j.checkpoint == "out/checkpoint.pt"


def test_cancel_that_arrives_after_success_keeps_the_result():
    j, runner, _ = _job()
    j.start()
    runner.handle.say('{"event": "done", "phase": "segment", "output": "s.nrrd"}')
    j.cancel()
    runner.handle.exit(0)
    j.poll()
    assert j.state == "done"


def test_launch_failure_and_cancel_before_start():
    j, _, seen = _job(fail=FileNotFoundError("no such file: PythonSlicer"))
    j.start()
    assert seen["states"] == ["starting", "failed"] and "PythonSlicer" in j.error_message
    j2, _, seen2 = _job()
    j2.cancel()
    assert seen2["states"] == ["cancelled"]
    with pytest.raises(RuntimeError):
        j2.start()


def test_wait_times_out_while_the_job_runs():
    j, runner, _ = _job()
    j.start()
    ticks = []
    with pytest.raises(TimeoutError):
        j.wait(timeout=0.05, interval=0.01, on_tick=lambda: ticks.append(1))
    assert ticks and j.state == "starting"


# -- real processes --------------------------------------------------------------------------------------

FAKE_ENGINE = textwrap.dedent('''
    import json, signal, subprocess, sys, time
    total = int(sys.argv[1]); ignore_term = sys.argv[2] == "ignore-term"
    def say(**event):
        print(json.dumps(event), flush=True)
    def stop(signum, frame):
        say(event="cancelled", message="Stopped; checkpoint written.", checkpoint="ckpt.pt")
        sys.exit(3)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else stop)
    if ignore_term:  # a child that also ignores SIGTERM: only a kill of the tree ends it
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print("child", child.pid, flush=True)
    print("a warning that is not JSON", flush=True)
    say(event="start", phase="train", total=total, device="cpu")
    for i in range(1, total + 1):
        time.sleep(0.05)
        say(event="progress", phase="train", iteration=i, total=total, losses={"loss": 1.0 / i})
    say(event="done", phase="train", model="model.pt")
''')


@pytest.fixture
def fake_engine(tmp_path):
    path = tmp_path / "fake_engine.py"
    path.write_text(FAKE_ENGINE)
    return str(path)


def test_real_process_runs_to_done(fake_engine):
    logs = []
    j = Job([sys.executable, fake_engine, "3", "-"], on_log=logs.append, name="Fake")
    assert j.start().wait(timeout=60) == "done"
    assert j.states == ["idle", "starting", "running", "importing", "done"]
    assert j.last_progress.iteration == 3 and j.done_event.get("model") == "model.pt"
    assert logs == ["a warning that is not JSON"]


def test_real_process_cancel_with_sigterm_ends_cancelled(fake_engine):
    if os.name == "nt":
        pytest.skip("SIGTERM handlers are a POSIX feature")
    j = Job([sys.executable, fake_engine, "100000", "-"], name="Fake")
    j.start()
    _until_first_progress(j)
    j.cancel()
    assert j.wait(timeout=30) == "cancelled"
    assert j.exit_code == 3 and j.checkpoint == "ckpt.pt"
    assert j._handle.proc.poll() is not None


def test_real_process_tree_is_killed_after_the_grace_period(fake_engine):
    psutil = pytest.importorskip("psutil")
    j = Job([sys.executable, fake_engine, "100000", "ignore-term"], name="Fake", grace_s=0.5)
    child = []
    j.on_log = lambda line: child.append(int(line.split()[1])) if line.startswith("child") else None
    j.start()
    _until_first_progress(j)
    assert child and psutil.pid_exists(child[0])
    started = time.monotonic()
    j.cancel()
    assert j.wait(timeout=30) == "cancelled"
    assert time.monotonic() - started >= 0.4  # it waited for the grace period, then killed
    assert j._handle.proc.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child[0]).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the engine's child process survived the cancel")


def test_job_default_runner_is_subprocess():
    assert isinstance(Job(["x"]).runner, jobmod.SubprocessRunner)


# -- the stop file: a cancel that every platform honours --------------------------------------------------

class RecordingHandle(FakeHandle):
    """Records whether the stop file existed when the process tree was terminated."""

    def __init__(self, sink, stop_file):
        super().__init__(sink)
        self.stop_file = stop_file
        self.stop_file_existed_at_cancel = None
        self.cancelled_at = None

    def cancel(self, grace_s):
        super().cancel(grace_s)
        self.stop_file_existed_at_cancel = os.path.exists(self.stop_file)
        self.cancelled_at = time.monotonic()


class RecordingRunner(FakeRunner):
    def __init__(self, stop_file):
        super().__init__()
        self.stop_file = stop_file

    def start(self, command, env, cwd, sink):
        self.handle = RecordingHandle(sink, self.stop_file)
        return self.handle


def test_cancel_writes_the_stop_file_and_terminates_only_after_the_grace_period(tmp_path):
    stop_file = str(tmp_path / "work" / "stop")
    runner = RecordingRunner(stop_file)
    j = Job(["engine", "train"], runner=runner, stop_file=stop_file, stop_grace_s=0.3, grace_s=5.0)
    j.start()
    asked = time.monotonic()
    j.cancel()
    assert os.path.isfile(stop_file) and runner.handle.cancels == 0  # asked, not terminated
    deadline = time.monotonic() + 10
    while runner.handle.cancels == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.handle.cancels == 1 and runner.handle.stop_file_existed_at_cancel is True
    assert runner.handle.cancelled_at - asked >= 0.3 and j.terminated
    runner.handle.exit(-15)
    j.poll()
    assert j.state == "cancelled"


def test_a_stale_stop_file_is_removed_when_a_job_starts(tmp_path):
    stop_file = tmp_path / "stop"
    stop_file.write_text("left over")
    j = Job(["engine"], runner=FakeRunner(), stop_file=str(stop_file))
    j.start()
    assert not stop_file.exists() and j.state == "starting"


STOP_FILE_ENGINE = textwrap.dedent('''
    import json, os, sys, time
    stop_file = sys.argv[1]
    def say(**event):
        print(json.dumps(event), flush=True)
    say(event="start", phase="train", total=100000)
    i = 0
    while not os.path.exists(stop_file):  # the iteration boundary
        i += 1
        say(event="progress", phase="train", iteration=i, total=100000)
        time.sleep(0.05)
    say(event="progress", phase="train", iteration=i + 1, total=100000)  # after the request: still read
    say(event="cancelled", phase="train", message="Stopped.", checkpoint="run/checkpoint.pt")
    sys.exit(3)
''')


def test_real_process_that_honours_the_stop_file_is_a_clean_cancel(tmp_path):
    engine = tmp_path / "engine.py"
    engine.write_text(STOP_FILE_ENGINE)
    stop_file = str(tmp_path / "stop")
    iterations = []
    j = Job([sys.executable, str(engine), stop_file], stop_file=stop_file, stop_grace_s=60.0, name="Fake",
            on_event=lambda e: iterations.append(e.iteration) if e.event == "progress" else None)
    j.start()
    _until_first_progress(j)
    started = time.monotonic()
    j.cancel()
    assert j.wait(timeout=30) == "cancelled"
    assert time.monotonic() - started < 30  # it ended by itself, long before the grace period
    assert j.exit_code == 3 and not j.terminated and j.checkpoint == "run/checkpoint.pt"
    assert iterations[-1] == j.last_progress.iteration and len(iterations) >= 2  # drained while waiting


def test_real_process_that_ignores_the_stop_file_is_terminated_after_the_grace_period(fake_engine, tmp_path):
    stop_file = str(tmp_path / "stop")
    j = Job([sys.executable, fake_engine, "100000", "-"], stop_file=stop_file, stop_grace_s=0.6, grace_s=5.0,
            name="Fake")
    j.start()
    _until_first_progress(j)
    started = time.monotonic()
    j.cancel()
    assert os.path.isfile(stop_file)
    assert j.wait(timeout=30) == "cancelled"
    assert time.monotonic() - started >= 0.55 and j.terminated
    assert j._handle.proc.poll() is not None


# -- one process runner: UTF-8 with replacement, no console window, the given environment ----------------

def test_the_runner_reads_utf8_with_replacement_whatever_the_code_page(tmp_path):
    script = tmp_path / "speaks.py"
    script.write_text(textwrap.dedent('''
        import json, os, sys
        out = sys.stdout.buffer
        out.write(b"\\xff\\xfe not UTF-8 \\x81\\n")  # a chunk no decoder of UTF-8 accepts
        out.write(json.dumps({"event": "progress", "phase": "train", "iteration": 1, "total": 1,
                              "message": "Leber \\u809d\\u81d3 " + os.environ["FROM_BASE"]},
                             ensure_ascii=False).encode("utf-8") + b"\\n")
        out.write(json.dumps({"event": "done", "phase": "suggest", "ranking": []}).encode("utf-8") + b"\\n")
        out.flush()
    '''))
    logs = []
    # the base environment replaces this process's (Slicer's startup environment, in Slicer)
    base = dict(os.environ, FROM_BASE="base", PYTHONIOENCODING="cp1252")
    j = Job([sys.executable, str(script)], runner=jobmod.SubprocessRunner(base_env=base), on_log=logs.append)
    assert j.start().wait(timeout=60) == "done"
    assert j.last_progress.message == "Leber \u809d\u81d3 base"
    assert j.done_event.get("ranking") == []  # the line after the bad bytes arrived
    assert len(logs) == 1 and "\ufffd" in logs[0] and "not UTF-8" in logs[0]


def test_popen_arguments_hide_the_console_on_windows_and_merge_the_environment():
    args = jobmod.popen_arguments({"A": "1"}, "/work", base_env={"B": "2", "A": "0"}, os_name="nt")
    assert args["encoding"] == "utf-8" and args["errors"] == "replace"
    assert args["creationflags"] == getattr(__import__("subprocess"), "CREATE_NO_WINDOW", 0x08000000)
    assert args["env"] == {"A": "1", "B": "2"} and args["cwd"] == "/work"
    assert "creationflags" not in jobmod.popen_arguments(None, None, {}, os_name="posix")


# -- a scene close: cancelled by the stop file, cut off from the scene -------------------------------------

def test_detach_cancels_by_the_stop_file_and_nothing_reaches_the_closed_scene(tmp_path):
    stop_file = str(tmp_path / "stop")
    imported, cleaned = [], []
    j, runner, seen = _job(stop_file=stop_file, importer=lambda job: imported.append(1),
                           cleanup=lambda job: cleaned.append(job.state))
    j.start()
    runner.handle.say('{"event": "progress", "phase": "train", "iteration": 1, "total": 9}')
    j.poll()
    before = list(seen["states"])
    j.detach()
    assert os.path.exists(stop_file)  # the engine stops itself, with a checkpoint
    runner.handle.say('{"event": "progress", "phase": "train", "iteration": 2, "total": 9}', "a log line")
    runner.handle.exit(0)  # even a process that finished well: its result is not imported
    j.poll()
    assert j.finished and not imported
    assert seen["states"] == before and seen["events"] == ["progress"] and seen["logs"] == []
    assert cleaned == [j.state]


# -- temporary folders: removed on every outcome but a cancel that can be resumed ----------------------------

@pytest.mark.parametrize("outcome, kept", [
    ("done", False), ("engine error", False), ("importer error", False), ("launch error", False),
    ("cancel without checkpoint", False), ("cancel with checkpoint", True)])
def test_the_work_folder_is_removed_unless_the_cancel_can_be_resumed(tmp_path, outcome, kept):
    folder = tmp_path / "SemiSupSeg-train-1"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "case.nrrd").write_text("x")

    def importer(job):
        if outcome == "importer error":
            raise RuntimeError("broken result")

    j, runner, _ = _job(fail=OSError("no such file") if outcome == "launch error" else None, importer=importer,
                        cleanup=jobmod.work_folder_cleanup(str(folder)))
    j.start()
    if outcome != "launch error":
        if outcome.startswith("cancel"):
            j.cancel()
            if outcome == "cancel with checkpoint":
                runner.handle.say('{"event": "cancelled", "phase": "train", "checkpoint": "run/checkpoint.pt"}')
            runner.handle.exit(3)
        else:
            runner.handle.exit(1 if outcome == "engine error" else 0)
        j.poll()
    assert j.finished
    assert folder.exists() == kept
    assert jobmod.resumable(j) == kept


def test_keep_temporary_files_keeps_the_folder(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    j, runner, _ = _job(cleanup=jobmod.work_folder_cleanup(str(folder), keep=True))
    j.start()
    runner.handle.exit(0)
    j.poll()
    assert j.state == "done" and folder.exists()
