"""The results store: one JSON line per finished run, appended atomically, with provenance.

File layout: ``<out>/<experiment>/<profile>.jsonl`` (see ``results/README.md``). Each line is
one record, a JSON object::

    {"schema": 1, "key": "3f2a...", "kind": "student" | "teacher",
     "config": {...}, "metrics": {...}, "provenance": {...}}

``key`` is :func:`run_key` of ``config``; a rerun skips every key already in the file.

Non-finite numbers: JSON has no infinity, so ``alpha = inf`` (and any other non-finite
float in a record) is stored as the *string* ``"inf"`` (``"-inf"``, ``"nan"``); all
records are written with ``allow_nan=False``. :func:`decode_float` turns the strings back
into floats; :func:`load_records` does so for ``config.alpha``.

Atomicity: a record is appended with a single ``os.write`` of the complete line (ending in
``"\\n"``) to a file opened with ``O_APPEND``, under an exclusive ``flock``, followed by
``fsync``. A process killed mid-write can leave at most a torn last line (bytes after the
last newline). :meth:`ResultsStore.load` ignores such a line and, when ``repair`` is true,
truncates it away; :meth:`ResultsStore.append` repairs before writing. A damaged line
*before* the last one means the file is not ours (or was edited): :class:`ResultsFileError`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from kdlib.stats import t_quantile

SCHEMA_VERSION = 1


class ResultsFileError(ValueError):
    """A results file exists but cannot be read as a sequence of records."""


class RunInProgressError(RuntimeError):
    """Another process is running the same experiment into the same results file."""


@contextlib.contextmanager
def run_lock(results_path: str | os.PathLike, lock_dir: str | os.PathLike) -> Iterator[None]:
    """Hold a non-blocking exclusive lock for ``results_path`` (a file in ``lock_dir``, not next to it).

    Raises:
        RunInProgressError: another process holds the lock.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(Path(results_path).resolve()).encode()).hexdigest()[:16]
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(f"another kdlib run is writing {results_path}; wait for it to finish "
                                     "or choose another --out") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- encoding

def encode_float(x: float | None) -> float | str | None:
    """``x`` for JSON: finite floats unchanged, ``inf``/``-inf``/``nan`` as strings, ``None`` kept."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(x: float | int | str | None) -> float | None:
    """Inverse of :func:`encode_float`.

    Raises:
        ValueError: for a string other than ``"inf"``, ``"-inf"``, ``"nan"``.
    """
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"expected a number or 'inf'/'-inf'/'nan', got {x!r}")
        return float(x)
    return float(x)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return encode_float(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


def dumps(record: dict[str, Any]) -> str:
    """Canonical one-line JSON of ``record`` (sorted keys, non-finite floats as strings)."""
    return json.dumps(_jsonable(record), sort_keys=True, allow_nan=False, separators=(",", ":"))


def run_key(config: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(dumps(config).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- provenance

def utc_now() -> str:
    """Current time as ISO 8601 UTC with seconds, e.g. ``2025-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path``.

    ``dirty`` is true when tracked files differ from the commit (untracked files are ignored).
    Defaults to the repository containing this package.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


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


def environment(device: torch.device | str) -> dict[str, Any]:
    """Provenance shared by every record of one run (no host name, no paths)."""
    import numpy

    return {**{f"git_{k}": v for k, v in git_state().items()},
            "device": str(torch.device(device)), "device_name": device_name(device),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.system()}


# ----------------------------------------------------------------------------- the store

class ResultsStore:
    """An append-only ``.jsonl`` file of records, safe against crashes and concurrent writers.

    The file (and its directory) is created only when the first record is appended, so a
    run that fails before finishing anything leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self, repair: bool = True) -> list[dict[str, Any]]:
        """All complete records, in file order (empty list when the file does not exist).

        Args:
            repair: truncate a torn last line (one without a final newline) from the file.

        Raises:
            ResultsFileError: the path is a directory or unreadable, or a line other than a
                torn last one is not a JSON object with a ``key``.
        """
        if not self.path.exists():
            return []
        try:
            if repair:
                with self._locked() as fd:
                    data = _read_all(fd)
                    good = _complete_length(data)
                    if good < len(data):
                        os.ftruncate(fd, good)
                        os.fsync(fd)
            else:
                data = self.path.read_bytes()
        except (IsADirectoryError, PermissionError, OSError) as e:
            raise ResultsFileError(f"cannot read results file {self.path}: {e}") from None
        return _parse(data[:_complete_length(data)], self.path)

    def keys(self) -> set[str]:
        """Keys of all complete records."""
        return {r["key"] for r in self.load()}

    def append(self, record: dict[str, Any]) -> bool:
        """Append one record as one line: a single ``os.write``, then ``fsync``.

        A record whose ``key`` is already in the file is not written again (checked under the
        lock, so two writers never duplicate a run).

        Returns:
            ``True`` if the record was written, ``False`` if its key was already present.

        Raises:
            ValueError: if ``record`` has no ``key`` or cannot be encoded as strict JSON.
        """
        if "key" not in record:
            raise ValueError("record must have a 'key'")
        line = (dumps(record) + "\n").encode()
        marker = f'"key":{json.dumps(str(record["key"]))}'.encode()  # exact: other keys end in _key
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fd:
            data = _read_all(fd)
            good = _complete_length(data)
            if good < len(data):
                os.ftruncate(fd, good)
            if marker in data[:good]:
                return False
            written = os.write(fd, line)
            while written < len(line):  # regular files write fully; be safe anyway
                written += os.write(fd, line[written:])
            os.fsync(fd)
        if created:
            _fsync_dir(self.path.parent)
        return True

    def _locked(self) -> _Lock:
        return _Lock(self.path)


class _Lock:
    """Open ``path`` for appending (creating it) and hold an exclusive ``flock`` on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _complete_length(data: bytes) -> int:
    """Length of the prefix of ``data`` that ends with its last newline."""
    return data.rfind(b"\n") + 1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(data: bytes, path: Path) -> list[dict[str, Any]]:
    records = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsFileError(f"{path}, line {n}: not a JSON record ({e})") from None
        if not isinstance(rec, dict) or "key" not in rec:
            raise ResultsFileError(f"{path}, line {n}: not a result record (no 'key')")
        records.append(rec)
    return records


def load_records(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a results file with ``config.alpha`` decoded to float (``"inf"`` -> ``math.inf``).

    Does not modify the file (a torn last line is skipped, not repaired).

    Args:
        path: a ``.jsonl`` results file.
        kind: keep only records of this kind (``"student"`` or ``"teacher"``).

    Raises:
        ResultsFileError: as :meth:`ResultsStore.load`; also when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"no results file at {path}")
    out = []
    for rec in ResultsStore(path).load(repair=False):
        if kind is not None and rec.get("kind") != kind:
            continue
        cfg = rec.get("config", {})
        if "alpha" in cfg:
            cfg["alpha"] = decode_float(cfg["alpha"])
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- summaries

def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom (exact; NaN for ``df < 1``)."""
    if df < 1:
        return math.nan
    return t_quantile(0.975, df)


def mean_std_ci(values: Sequence[float]) -> dict[str, float]:
    """``{"n", "mean", "std" (ddof=1), "ci95" (t-based half-width)}``; std and ci95 are NaN for n < 2."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = math.fsum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "std": std, "ci95": t_quantile_975(n - 1) * std / math.sqrt(n)}


GROUP_FIELDS = ("label", "model", "alpha", "T", "beta", "normalize_by_alpha")


def _field(rec: dict[str, Any], name: str) -> Any:
    value = rec["config"].get(name)
    if name == "model" and isinstance(value, dict):
        hidden = value.get("hidden")
        return f"{value.get('kind')}{'x'.join(map(str, hidden)) if hidden else ''}"
    return value


def summarize(records: Iterable[dict[str, Any]], metric: str = "test_accuracy",
              by: Sequence[str] = GROUP_FIELDS) -> list[dict[str, Any]]:
    """Mean, sample std, 95% interval and n of ``metrics[metric]`` over seeds, per group.

    Records are grouped by the config fields ``by`` (all but the seed); teachers and
    students are kept apart by ``kind``. Rows come in first-appearance order.

    Returns:
        list of dicts with ``kind``, the ``by`` fields, ``n``, ``mean``, ``std``, ``ci95``,
        ``seeds``.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        value = rec.get("metrics", {}).get(metric)
        if value is None:
            continue
        ident = (rec.get("kind"), *(_freeze(_field(rec, f)) for f in by))
        row = groups.setdefault(ident, {"kind": rec.get("kind"), **{f: _field(rec, f) for f in by},
                                        "values": [], "seeds": []})
        row["values"].append(float(value))
        row["seeds"].append(rec["config"].get("seed"))
    rows = []
    for row in groups.values():
        rows.append({**{k: v for k, v in row.items() if k != "values"}, **mean_std_ci(row.pop("values"))})
    return rows


def _freeze(v: Any) -> Any:
    return json.dumps(_jsonable(v), sort_keys=True) if isinstance(v, (dict, list)) else v


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """Plain-text table of ``rows`` (missing values shown as ``-``), one line per row."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return f"{v:.{digits}f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
