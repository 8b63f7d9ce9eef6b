"""Provenance: what produced a run (versions, the git state, the device and its instruction set, the
time), recorded in every record, and the git lookups that check a page's claims against history."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy
import torch

from kdlib.lab.config import cpu_flags

#: The results directory at the top of the repository (its records do not make the tree dirty).
RESULTS = "results"


def utc_now() -> str:
    """Current time as ISO 8601 UTC with seconds, e.g. ``2025-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path``.

    ``dirty`` is true when tracked files differ from the commit. Untracked files and the results
    directory (``results/`` at the top of the repository) are ignored: a run appends its records to
    a tracked results file, and an experiment started while another's records are still being
    written or not yet committed runs the same code. Defaults to the repository containing this
    package.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ":(top)", f":(top,exclude){RESULTS}"], cwd=cwd,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def file_at_commit(path: str | os.PathLike, commit: str) -> bytes | None:
    """The content of the file ``path`` at ``commit`` (``git show commit:path``), ``None`` when the
    commit did not hold it. With it a page checks that a confirmation's records were run from
    commits that already held its hypothesis file, exactly as committed now.

    Raises:
        LookupError: git or the repository is missing, or ``commit`` is unknown here (a shallow
            clone), so the question cannot be answered.
    """
    path = Path(path).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        top = Path(top).resolve()
        subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=top, capture_output=True,
                       timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise LookupError(f"cannot read commit {commit!r} of the repository holding {path}") from e
    out = subprocess.run(["git", "show", f"{commit}:{path.relative_to(top).as_posix()}"], cwd=top,
                         capture_output=True, timeout=30)
    return out.stdout if out.returncode == 0 else None


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device``: the GPU model, or the CPU model and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})"


#: CPU features that decide how fast (and, in the last bits, how) matrix products are computed.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def environment(device: torch.device | str) -> dict[str, Any]:
    """Provenance shared by every record of one run (no host name, no paths).

    Besides versions and the git state: the device and its name, torch's thread count and,
    on a CPU, the instruction-set features of :data:`ISA_FLAGS` it has (``cpu_isa``) and the
    kernel torch's CPU dispatch uses (``cpu_capability``), since CPUs of one model family can
    round differently.
    """


    device = torch.device(device)
    env = {**{f"git_{k}": v for k, v in git_state().items()},
           "device": str(device), "device_name": device_name(device),
           "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "platform": platform.system(),
           "threads": torch.get_num_threads()}
    if device.type == "cpu":
        flags = cpu_flags()
        env["cpu_isa"] = [f for f in ISA_FLAGS if f in flags]
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env
