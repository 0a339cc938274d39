"""Shared pieces of the speed benchmarks: the machine's description, peak memory of a process, running one
measured procedure in a fresh child process, Markdown tables and the JSON report.

Every measured procedure runs in its own child process (``python <script> --child TASK.json``) so that its
peak memory is its own: the child reports ``VmHWM`` (the kernel's high-water mark of the resident set of
the child's address space, Linux) and ``getrusage(RUSAGE_SELF).ru_maxrss``. The parent process never
imports torch, so neither figure carries the parent's memory.
"""

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from SemiSupSegTraining.atomicio import write_json_atomic  # noqa: E402  (plain Python: no torch here)

MIB = 1024.0 * 1024.0


# ------------------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    """The CPU's model name (lscpu / /proc/cpuinfo), else ``platform.processor()``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> List[str]:
    """The CPU features that matter for conv speed (AVX-512, bf16, AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return []
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def machine_info() -> Dict[str, Any]:
    """Host facts (no torch import): CPU, core count, OS, Python, the load when the run started."""
    info = {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def torch_info(device: str) -> Dict[str, Any]:
    """torch's version, threads and precision support (call in a child: it imports torch)."""
    import torch

    from SemiSupSegTraining.devices import autocast_dtype

    info = {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()}
    try:
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        info["mkldnn_bf16"] = False
    dev = torch.device(device)
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2 ** 30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
    inference = autocast_dtype(dev, True)
    training = autocast_dtype(dev, True, training=True)
    info["engine_inference_dtype"] = str(inference).replace("torch.", "") if inference else "float32"
    info["engine_training_dtype"] = str(training).replace("torch.", "") if training else "float32"
    return info


def describe_machine(machine: Dict[str, Any], torch_facts: Dict[str, Any], device: str) -> str:
    flags = ", ".join(machine.get("cpu_flags") or []) or "none of avx2/avx512/bf16/amx"
    text = (f"{machine['cpu']} ({machine['cpu_count']} logical CPUs; {flags}), torch {torch_facts.get('torch')} "
            f"with {torch_facts.get('threads')} threads, device {device}")
    if torch_facts.get("gpu"):
        text += f" ({torch_facts['gpu']}, CUDA {torch_facts.get('cuda')})"
    if "load_average_1min" in machine:
        text += f"; load average {machine['load_average_1min']} when the run started"
    return text


# --------------------------------------------------------------------------------------------- memory

def _proc_status_mib(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_now_mib() -> Optional[float]:
    value = _proc_status_mib("VmRSS")
    if value is None:
        try:
            import psutil

            value = psutil.Process().memory_info().rss / MIB
        except ImportError:
            return None
    return value


def reset_peak_memory() -> bool:
    """Resets the kernel's high-water mark of this process's RSS to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory() -> Dict[str, Optional[float]]:
    """This process's peak resident memory so far (MiB): VmHWM where Linux has it, and ru_maxrss."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_mib = maxrss / MIB if sys.platform == "darwin" else maxrss / 1024.0  # bytes on macOS, KiB on Linux
    hwm = _proc_status_mib("VmHWM")
    return {"peak_rss_mib": round(hwm if hwm is not None else maxrss_mib, 1), "ru_maxrss_mib": round(maxrss_mib, 1),
            "vmhwm_mib": None if hwm is None else round(hwm, 1)}


def cuda_peak_mib(device: str) -> Optional[float]:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / MIB, 1)


def cuda_reserved_peak_mib(device: str) -> Optional[float]:
    """The most torch's caching allocator held at once: what a smaller card would need to have."""
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_reserved() / MIB, 1)


# -------------------------------------------------------------------------------------------- timing

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any], repeats: int, sync: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Runs ``fn`` ``repeats`` times; returns the times and the last result."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        if sync:
            sync()
        start = time.perf_counter()
        result = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return {"times_s": [round(t, 4) for t in times], "median_s": round(median(times), 4),
            "min_s": round(min(times), 4), "result": result}


def device_sync(device: str) -> Optional[Callable[[], None]]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


# ---------------------------------------------------------------------------------------- child runs

class ChildFailed(RuntimeError):
    pass


def run_child(script: str, task: Dict[str, Any], workdir: str, timeout: float = 3600.0) -> Dict[str, Any]:
    """Runs ``python script --child task.json`` in a fresh process and returns the JSON it wrote."""
    fd, task_path = tempfile.mkstemp(suffix=".json", prefix=f"task-{task['kind']}-", dir=workdir)
    result_path = task_path[:-5] + ".result.json"
    task = dict(task, result_path=result_path)
    with os.fdopen(fd, "w") as f:
        json.dump(task, f)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "--child", task_path], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0 or not os.path.exists(result_path):
        tail = (proc.stderr or proc.stdout or "")[-3000:]
        raise ChildFailed(f"The {task['kind']} child failed (exit {proc.returncode}):\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    result["child_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def child_main(task_path: str, handlers: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]]) -> None:
    with open(task_path) as f:
        task = json.load(f)
    threads = task.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    result = handlers[task["kind"]](task)
    with open(task["result_path"], "w") as f:
        json.dump(result, f)


# -------------------------------------------------------------------------------------------- report

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "**MISSED**")


def command_line() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join(["python", script] + sys.argv[1:])


def write_json(path: Optional[str], data: Dict[str, Any]) -> None:
    """The results as JSON, written atomically (the engine's one atomic write); nothing without a path."""
    if path:
        write_json_atomic(path, data)


def dice(a, b, num_classes: int) -> Optional[float]:
    """Mean Dice over the foreground classes of two label maps (numpy); None when both are empty."""
    import numpy as np

    scores = []
    for k in range(1, num_classes):
        x, y = a == k, b == k
        total = int(x.sum()) + int(y.sum())
        if total:
            scores.append(2.0 * int(np.logical_and(x, y).sum()) / total)
    return round(float(np.mean(scores)), 5) if scores else None


def run_and_report(name: str, run_all: Callable[..., Dict[str, Any]], format_report: Callable[[Dict[str, Any]], str],
                   args: Any, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The parent's common part: run every procedure in a scratch folder, print the tables, write the JSON."""
    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as work:
        report = run_all(args, settings, machine, work)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(format_report(report))
    write_json(args.json, report)
    if args.json:
        print(f"[{name} {time.strftime('%H:%M:%S')}] results written to {args.json}", file=sys.stderr, flush=True)
    return report


def logger(name: str) -> Callable[[str], None]:
    """A timestamped progress line on stderr, prefixed with the benchmark's name."""
    def log(text: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
    return log


def speed_parser(doc: str, quick_help: str):
    """The options every speed benchmark shares: --quick, --device, --json."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", help="write the results to this JSON file")
    return p
