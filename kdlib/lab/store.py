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
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlib.lab.config import cpu_flags

SCHEMA_VERSION = 1  #: the ``schema`` of every record :func:`make_record` builds


class ResultsFileError(ValueError):
    """A results file cannot be read as a sequence of records, or cannot be written."""


class CacheError(ValueError):
    """The teacher cache directory cannot be used (not a directory, or not writable when it must be)."""


class RunInProgressError(RuntimeError):
    """Another process is running the same experiment into the same results file."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[int]:
    """Open ``path`` (created if missing, ``O_APPEND``) and hold an exclusive ``flock`` on it.

    The one lock of kdlib: a results file locks itself while a record is appended; a run locks a
    file named after its results file; a teacher key locks ``<key>.lock`` while it is trained.
    Yields the open file descriptor (for reading and appending under the lock).

    On a file system without ``flock`` (some NFS and Lustre mounts of clusters answer ``ENOLCK``
    or ``EOPNOTSUPP``) the file is used unlocked: what stays safe there is what needs no lock,
    sharded runs, where every job writes its own file (:func:`results_path`).

    Raises:
        BlockingIOError: ``blocking`` is false and another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def run_lock(results_path: str | os.PathLike) -> Iterator[None]:
    """Hold a non-blocking exclusive lock for ``results_path``: the file ``.<name>.lock`` beside it.

    Beside the results file, not in the teacher cache, so two runs into one results file are
    refused whatever caches they use. A run that ends without a results file (it failed before
    finishing anything) leaves nothing behind: the lock file and the directories made for it
    are removed.

    Raises:
        RunInProgressError: another process holds the lock.
    """
    path = Path(results_path)
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    try:
        with file_lock(lock, blocking=False):
            try:
                yield
            finally:
                if not path.exists():
                    lock.unlink(missing_ok=True)
                    for d in made:  # innermost first
                        with contextlib.suppress(OSError):
                            d.rmdir()
    except BlockingIOError:
        raise RunInProgressError(f"another kdlib run is writing {results_path}; wait for it to finish "
                                 "or choose another --out") from None


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, ``fsync``, ``os.replace``.

    A reader sees the old file or the new one, never a part; a crash leaves at most the
    temporary file (named ``.<name>.*.tmp``). A ``path`` that is a symbolic link is written
    through: its target is replaced (the temporary file beside the target), the link kept.

    Raises:
        FileNotFoundError: ``path`` is a symbolic link to nothing (or a loop of links).
        OSError: the file cannot be written.
    """
    path = Path(path)
    if path.is_symlink():  # replacing the link itself would leave its target stale
        try:
            path = Path(os.path.realpath(path, strict=True))
        except OSError:
            raise FileNotFoundError(errno.ENOENT, f"a symbolic link to {os.readlink(path)}, which does not "
                                    "exist", str(path)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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


def make_record(kind: str, key: str, config: dict[str, Any], metrics: dict[str, Any],
                provenance: dict[str, Any]) -> dict[str, Any]:
    """One record of the store: ``{"schema", "key", "kind", "config", "metrics", "provenance"}``.

    Raises:
        ValueError: ``kind`` is not ``"teacher"`` or ``"student"``.
    """
    if kind not in ("teacher", "student"):
        raise ValueError(f"kind must be 'teacher' or 'student', got {kind!r}")
    return {"schema": SCHEMA_VERSION, "key": key, "kind": kind, "config": config, "metrics": metrics,
            "provenance": provenance}


# ----------------------------------------------------------------------------- provenance

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
    import numpy

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


# ----------------------------------------------------------------------------- where results live

RESULTS = "results"  #: the committed results, at the top of the repository (see :func:`results_root`)
SCRATCH = "_scratch"  #: sub-directory of a results root for smoke runs and trials (ignored by git)


def results_root() -> Path:
    """Directory of the committed results: ``$KDLIB_RESULTS_DIR`` or ``results/`` of this repository."""
    env = os.environ.get("KDLIB_RESULTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / RESULTS


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: a part of an experiment's students with its own results file.

    Raises:
        ValueError: ``count < 1`` or ``index`` not in ``[0, count)``.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is I/N with 0 <= I < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` (e.g. ``"0/4"``) as a :class:`Shard`.

        Raises:
            ValueError: not two integers ``I/N`` with ``0 <= I < N``.
        """
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if m is None:
            raise ValueError(f"a shard is I/N (0-based, e.g. 0/4), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def results_path(out: str | os.PathLike, experiment: str, profile: str, shard: Shard | None = None) -> Path:
    """``<out>/<experiment>/<profile>.jsonl``: the one rule for where a run's records go.

    A shard's records go beside it, to ``<profile>.shard-<I>-of-<N>.jsonl``: every shard writes
    its own file, so no two jobs of a cluster ever write one file (file locks are unreliable on
    network file systems). Readers take them all as one (:func:`load_experiment_records`).
    """
    name = profile if shard is None else f"{profile}.shard-{shard.index}-of-{shard.count}"
    return Path(out) / experiment / f"{name}.jsonl"


def shard_files(path: str | os.PathLike) -> dict[Shard, Path]:
    """The shard files beside the results file ``path`` (``results_path`` without a shard), by shard."""
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"\.shard-(\d+)-of-(\d+)\.jsonl")
    found = {}
    if path.parent.is_dir():
        for f in path.parent.iterdir():
            m = pattern.fullmatch(f.name)
            if m is not None and int(m.group(1)) < int(m.group(2)):
                found[Shard(int(m.group(1)), int(m.group(2)))] = f
    return dict(sorted(found.items(), key=lambda item: (item[0].count, item[0].index)))


def experiment_files(path: str | os.PathLike) -> list[Path]:
    """The files holding an experiment's records: ``path`` (when it exists), then its shard files."""
    path = Path(path)
    return ([path] if path.exists() else []) + list(shard_files(path).values())


# ----------------------------------------------------------------------------- the store

class ResultsStore:
    """An append-only ``.jsonl`` file of records, safe against crashes and concurrent writers.

    The file (and its directory) is created only when the first record is appended, so a
    run that fails before finishing anything leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self, repair: bool = True) -> list[dict[str, Any]]:
        """All complete records, in file order, one per key (empty list when the file does not exist).

        A key repeated in the file (e.g. after ``cat a.jsonl b.jsonl``) counts once: its first
        record is kept.

        Args:
            repair: truncate a torn last line (one without a final newline) from the file.

        Raises:
            ResultsFileError: the path is a directory or unreadable, or a line other than a
                torn last one is not a record (:func:`check_record`).
        """
        if not self.path.exists():
            return []
        if repair and not os.access(self.path, os.W_OK):
            repair = False  # a read-only file is read as it is (a torn last line is skipped)
        try:
            if repair:
                with file_lock(self.path) as fd:
                    data = _read_all(fd)
                    good = _complete_length(data)
                    if good < len(data):
                        os.ftruncate(fd, good)
                        os.fsync(fd)
            else:
                data = self.path.read_bytes()
        except OSError as e:
            raise ResultsFileError(f"cannot read results file {self.path}: {e.strerror or e}") from None
        return _parse(data[:_complete_length(data)], self.path)

    def keys(self) -> set[str]:
        """Keys of all complete records."""
        return {r["key"] for r in self.load()}

    def check_writable(self, min_free: int = 16 << 20) -> None:
        """Refuse early what :meth:`append` would fail on after hours of training (creates nothing).

        Raises:
            ResultsFileError: the nearest existing directory above the file is not writable (or
                is a file), the file cannot be opened for appending, it is a symbolic link to
                nothing, or its file system has less than ``min_free`` bytes free.
        """
        if self.path.is_symlink() and not self.path.exists():  # appending would fail, after the training
            raise ResultsFileError(f"cannot write results file {self.path}: it is a symbolic link to "
                                   f"{os.readlink(self.path)}, which does not exist (remove the link or "
                                   "create its target)")
        try:
            if self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
            base = next(d for d in (self.path.parent, *self.path.parent.parents) if d.exists())
            if not base.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(base))
            if not os.access(base, os.W_OK):
                raise PermissionError(13, "Permission denied", str(base))
            free = shutil.disk_usage(base).free
        except OSError as e:
            raise ResultsFileError(f"cannot write results file {self.path}: {e.strerror or e}") from None
        if free < min_free:
            raise ResultsFileError(f"cannot write results file {self.path}: only {free >> 20} MiB free "
                                   f"on its disk (need {min_free >> 20} MiB)")

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
        try:
            written = self._append(line, marker)
        except OSError as e:
            raise ResultsFileError(f"cannot write results file {self.path}: {e.strerror or e}; the records "
                                   "already in it are intact") from None
        if created and written:
            _fsync_dir(self.path.parent)
        return written

    def _append(self, line: bytes, marker: bytes) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path) as fd:
            data = _read_all(fd)
            good = _complete_length(data)
            if good < len(data):
                os.ftruncate(fd, good)
            if marker in data[:good]:
                return False
            try:
                written = os.write(fd, line)
                while written < len(line):  # regular files write fully; be safe anyway
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, good)  # e.g. a full disk: leave no part of the line behind
                raise
        return True


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


#: The fields every record has, with their types (see :func:`make_record`).
RECORD_FIELDS = {"schema": int, "key": str, "kind": str, "config": dict, "metrics": dict, "provenance": dict}


def check_record(rec: object) -> str | None:
    """What is wrong with ``rec`` as a record (``None`` when nothing is).

    A record is a JSON object with the :data:`RECORD_FIELDS` of their types, ``kind``
    ``"teacher"`` or ``"student"``, and a numeric ``metrics.test_accuracy``.
    """
    if not isinstance(rec, dict):
        return "not a JSON object"
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(rec.get(name), kind):
            return f"field {name!r} missing or not a {kind.__name__}"
    if rec["kind"] not in ("teacher", "student"):
        return f"kind must be 'teacher' or 'student', got {rec['kind']!r}"
    if not isinstance(rec["metrics"].get("test_accuracy"), int | float):
        return "metrics.test_accuracy missing"
    return None


def _parse(data: bytes, path: Path) -> list[dict[str, Any]]:
    """The records of ``data``; a repeated key keeps its first record (a merge of files may repeat lines)."""
    records: dict[str, dict[str, Any]] = {}
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsFileError(f"{path}, line {n}: not a JSON record ({e})") from None
        problem = check_record(rec)
        if problem is not None:
            raise ResultsFileError(f"{path}, line {n}: not a result record ({problem})")
        records.setdefault(rec["key"], rec)
    return list(records.values())


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


def load_experiment_records(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """:func:`load_records` of an experiment's results file *and* its shard files, as one.

    ``path`` is the experiment's file, :func:`results_path` without a shard; it need not exist
    while its shards do. A key found in several files counts once: the record of the first file
    in :func:`experiment_files` order (the merged file, then the shards).

    Raises:
        ResultsFileError: neither the file nor any shard file exists, or one is not a results file.
    """
    files = experiment_files(path)
    if not files:
        raise ResultsFileError(f"no results file at {path} (nor any of its shard files)")
    records: dict[str, dict[str, Any]] = {}
    for f in files:
        for rec in load_records(f, kind):
            records.setdefault(rec["key"], rec)
    return list(records.values())


def merge_shard_files(path: str | os.PathLike) -> tuple[int, list[Path]]:
    """Fold the shard files of results file ``path`` into it, then remove them.

    The merged file is the old one (byte for byte) followed by every shard record whose key it
    lacks, written atomically (:func:`atomic_write`): a crash leaves the old file and every
    shard file as they were, and merging again finishes the job. Only after the merged file is
    on disk are the shard files removed. Runs into the file or a shard are refused meanwhile. A
    results file that is a symbolic link stays one: its target gets the merged records.

    Returns:
        ``(records added, shard files removed)``; ``(0, [])`` when there are no shard files.

    Raises:
        RunInProgressError: a run (a shard job, or an unsharded run) is writing one of the files.
        ResultsFileError: a file is not a results file, or the results file is a symbolic link
            to nothing (nothing is changed).
    """
    path = Path(path)
    shards = list(shard_files(path).values())
    if not shards:
        return 0, []
    with contextlib.ExitStack() as locks:
        for f in (path, *shards):
            locks.enter_context(run_lock(f))
        data = path.read_bytes() if path.exists() else b""
        data = data[:_complete_length(data)]
        keys = {r["key"] for r in _parse(data, path)}
        added = []
        for f in shards:
            for rec in ResultsStore(f).load(repair=False):
                if rec["key"] not in keys:
                    keys.add(rec["key"])
                    added.append(dumps(rec) + "\n")
        mode = (path if path.exists() else shards[0]).stat().st_mode & 0o777
        try:
            atomic_write(path, data + "".join(added).encode())
            os.chmod(path, mode)
        except OSError as e:
            raise ResultsFileError(f"cannot write {path}: {e.strerror or e}; the shard files are kept"
                                   ) from None
        for f in shards:
            f.unlink()
    return len(added), shards


# ----------------------------------------------------------------------------- teacher cache

class TeacherCache:
    """Teachers' weights and logits on disk, one set of files per teacher key.

    ``<dir>/<key>.pt``: the ``state_dict``; ``<dir>/<key>.logits.pt``: ``{"train", "val",
    "test"}`` logits ``(N, C)`` at temperature 1; ``<dir>/<key>.json``: the teacher's record,
    written last, whose ``provenance.cache`` holds the SHA-256 of the two other files. Default
    directory: ``$KDLIB_CACHE_DIR`` or ``~/.cache/kdlib`` (files in its ``teachers/``).

    :meth:`load` trusts nothing: an entry whose record is not JSON, names another key, lacks
    the checksums, or whose files do not match them, whose logits miss a split, have the wrong
    shape or hold non-finite values, is *damaged*. It is moved aside (``<name>.damaged``; when
    that exists from an earlier damage, ``<name>.2.damaged``, ``<name>.3.damaged``, ..., so
    nothing is lost) and reported as absent, and the teacher is trained afresh.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        if directory is None:
            env = os.environ.get("KDLIB_CACHE_DIR")
            directory = Path(env) if env else Path.home() / ".cache" / "kdlib"
        self.root = Path(directory)
        self.dir = self.root / "teachers"

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """``(weights, logits, record)`` paths of teacher ``key``."""
        return self.dir / f"{key}.pt", self.dir / f"{key}.logits.pt", self.dir / f"{key}.json"

    def load(self, key: str, rows: dict[str, int], num_classes: int, device: torch.device | str = "cpu",
             log: Callable[[str], None] = print) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The cached ``(logits, record)`` of teacher ``key``, or ``None`` when absent or damaged.

        Args:
            key: the teacher's run key.
            rows: the number of rows each split's logits must have, e.g. ``{"train": 54000, ...}``.
            num_classes: columns of the logits.
            device: where the logits go.
            log: told why an entry is damaged (it is then moved aside).
        """
        paths = self.paths(key)
        if not any(p.exists() for p in paths):
            return None
        try:
            return self._read(key, rows, num_classes, device)
        except Exception as e:  # anything unreadable is damage: never a different teacher under this key
            for p in paths:
                if p.exists():
                    os.replace(p, _free_name(p, ".damaged"))
            log(f"teacher cache entry {paths[2]} is damaged ({e}); moved aside as *.damaged, "
                "the teacher is trained again")
            return None

    def _read(self, key: str, rows: dict[str, int], num_classes: int, device: torch.device | str
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        weights, logits_path, record_path = self.paths(key)
        try:
            record = json.loads(record_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{record_path.name} is not a JSON record: {e}") from None
        sums = record.get("provenance", {}).get("cache") if isinstance(record, dict) else None
        if not isinstance(record, dict) or record.get("key") != key or not isinstance(sums, dict):
            raise ValueError(f"{record_path.name} is not the record of teacher {key} with checksums")
        blobs = {}
        for name, path in (("weights", weights), ("logits", logits_path)):
            blobs[name] = path.read_bytes()
            if hashlib.sha256(blobs[name]).hexdigest() != sums.get(f"{name}_sha256"):
                raise ValueError(f"{path.name} does not match the checksum in {record_path.name}")
        state = torch.load(io.BytesIO(blobs["weights"]), weights_only=True)
        logits = torch.load(io.BytesIO(blobs["logits"]), map_location=device, weights_only=True)
        if not isinstance(state, dict) or not isinstance(logits, dict):
            raise ValueError("the weights or logits file does not hold a dict of tensors")
        for split, n in rows.items():
            t = logits.get(split)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, num_classes):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else "missing"
                raise ValueError(f"{split} logits must have shape {(n, num_classes)}, got {got}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{split} logits hold NaN or infinite values")
        return logits, record

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on teacher ``key``, so concurrent runs train it only once.

        Temporary files of ``key`` left by a writer killed mid-save are removed once the lock
        is held (nobody else can be writing them then).
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = file_lock(self.dir / f"{key}.lock")
            lock.__enter__()
        except OSError:  # a read-only cache: reading needs no lock, and save() says what failed
            yield
            return
        try:
            for tmp in self.dir.glob(f".{key}.*.tmp"):
                tmp.unlink(missing_ok=True)
            yield
        finally:
            lock.__exit__(None, None, None)

    def check(self) -> None:
        """Refuse a cache location that is not a directory (e.g. a file or ``/dev/null``).

        Raises:
            CacheError: ``root`` or its ``teachers/`` exists and is not a directory.
        """
        for d in (self.root, self.dir):
            if d.exists() and not d.is_dir():
                raise CacheError(f"the teacher cache must be a directory, but {d} is not one")

    def save(self, key: str, state_dict: dict[str, torch.Tensor], logits: dict[str, torch.Tensor],
             record: dict[str, Any]) -> dict[str, Any]:
        """Write weights, logits and then ``record`` (with their checksums added) atomically.

        Returns:
            ``record`` with ``provenance.cache = {"weights_sha256", "logits_sha256"}``, as written.

        Raises:
            CacheError: a file cannot be written (read-only directory, full disk).
        """
        weights, logits_path, record_path = self.paths(key)
        blobs = {"weights": _torch_bytes({k: v.detach().cpu() for k, v in state_dict.items()}),
                 "logits": _torch_bytes({k: v.detach().cpu() for k, v in logits.items()})}
        sums = {f"{k}_sha256": hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
        record = {**record, "provenance": {**record.get("provenance", {}), "cache": sums}}
        try:
            atomic_write(weights, blobs["weights"])
            atomic_write(logits_path, blobs["logits"])
            atomic_write(record_path, dumps(record).encode())
        except OSError as e:
            raise CacheError(f"cannot write the teacher cache in {self.dir}: {e.strerror or e} "
                             "(choose another with --cache or KDLIB_CACHE_DIR)") from None
        return record


def _free_name(path: Path, suffix: str) -> Path:
    """``<name><suffix>``, else the first free ``<name>.<n><suffix>`` (n = 2, 3, ...), beside ``path``."""
    candidate, n = path.with_name(path.name + suffix), 2
    while candidate.exists() or candidate.is_symlink():
        candidate, n = path.with_name(f"{path.name}.{n}{suffix}"), n + 1
    return candidate


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- committed teacher logits

class CommittedTeachers:
    """Teachers' logits committed beside the results, so any student can be rerun without its teacher.

    ``<results>/teachers/<key>.npy``: one float16 array ``(N_train + N_val + N_test, C)``, the
    logits at temperature 1 of the train, validation and test splits in that order (a ``.npy``
    file's bytes depend only on the array, so its SHA-256 is stable); ``<key>.json``: the
    teacher's record, whose ``provenance.teacher_logits`` holds the file name, the row counts of
    the splits and the SHA-256. Students of a profile that commits its teachers' logits train
    from exactly these float16 values (as float32) and carry the SHA-256 in their records.

    Unlike :class:`TeacherCache` nothing here is moved aside or retrained: a committed file that
    does not match its record is an error to look at.

    Args:
        results: the results directory written to (``<results>/teachers/``).
        fallback: another results directory searched when ``results`` lacks a teacher (a run into
            a scratch directory finds the repository's committed teachers).
    """

    def __init__(self, results: str | os.PathLike, fallback: str | os.PathLike | None = None) -> None:
        self.dir = Path(results) / "teachers"
        self.search = [self.dir] + ([Path(fallback) / "teachers"] if fallback is not None else [])

    def paths(self, key: str) -> tuple[Path, Path]:
        """``(logits, record)`` paths of teacher ``key``: where both exist (searching ``results``,
        then ``fallback``), else where :meth:`save` writes them."""
        for d in self.search:
            npy, rec = d / f"{key}.npy", d / f"{key}.json"
            if npy.exists() and rec.exists():
                return npy, rec
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def exists(self, key: str) -> bool:
        """Whether both files of teacher ``key`` are there."""
        return all(p.exists() for p in self.paths(key))

    def save(self, key: str, logits: dict[str, torch.Tensor], record: dict[str, Any]
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Write ``logits`` (``{"train", "val", "test"}``, each ``(N, C)``) as float16, then the record.

        Returns:
            ``(logits rounded to float16 and back to float32, record with provenance.teacher_logits)``.

        Raises:
            ResultsFileError: a file cannot be written.
        """
        import numpy as np

        halves = {k: logits[k].detach().to(torch.float16).cpu() for k in ("train", "val", "test")}
        buf = io.BytesIO()
        np.save(buf, torch.cat(list(halves.values())).numpy(), allow_pickle=False)
        data = buf.getvalue()
        info = {"file": f"teachers/{key}.npy", "dtype": "float16", "sha256": hashlib.sha256(data).hexdigest(),
                "rows": {k: int(v.shape[0]) for k, v in halves.items()}}
        record = {**record, "provenance": {**record.get("provenance", {}), "teacher_logits": info}}
        npy, rec = self.dir / f"{key}.npy", self.dir / f"{key}.json"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(npy, data)
            atomic_write(rec, dumps(record).encode())
        except OSError as e:
            raise ResultsFileError(f"cannot write the teacher logits in {self.dir}: {e.strerror or e}"
                                   ) from None
        device = logits["train"].device
        return {k: v.to(device=device, dtype=torch.float32) for k, v in halves.items()}, record

    def load(self, key: str, rows: dict[str, int], num_classes: int, device: torch.device | str = "cpu"
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The committed ``(logits as float32 on device, record)`` of teacher ``key``.

        Raises:
            ResultsFileError: a file is missing or unreadable, the array's SHA-256 differs from
                the record's, or its shape does not match ``rows`` and ``num_classes``.
        """
        import numpy as np

        npy, rec = self.paths(key)
        try:
            record = json.loads(rec.read_text())
            data = npy.read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsFileError(f"cannot read the committed teacher {key} in {self.dir}: {e}") from None
        info = record.get("provenance", {}).get("teacher_logits", {}) if isinstance(record, dict) else {}
        if record.get("key") != key or hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise ResultsFileError(f"{npy} does not match the SHA-256 in {rec.name}: the committed teacher "
                                   "logits were changed (`git checkout -- results/teachers` restores them)")
        array = np.load(io.BytesIO(data), allow_pickle=False)
        want = (sum(rows.values()), num_classes)
        if array.shape != want or info.get("rows") != rows:
            raise ResultsFileError(f"{npy} holds logits of shape {array.shape} for splits "
                                   f"{info.get('rows')}; this data needs {want} for {rows}")
        parts = torch.from_numpy(array).to(device=device, dtype=torch.float32).split(list(rows.values()))
        return dict(zip(rows, parts, strict=True)), record
