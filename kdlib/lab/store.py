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
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlib.lab.records import SCHEMA_VERSION, decode_float, encode_float, record_problem


class ResultsFileError(ValueError):
    """A results file cannot be read as a sequence of records, or cannot be written."""


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
                torn last one is not a record (:func:`kdlib.lab.records.record_problem`).
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


def _parse(data: bytes, path: Path) -> list[dict[str, Any]]:
    """The records of ``data``; a repeated key keeps its first record (a merge of files may repeat lines)."""
    records: dict[str, dict[str, Any]] = {}
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ResultsFileError(f"{path}, line {n}: not a JSON record ({type(e).__name__}: {e})") from None
        problem = record_problem(rec)
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


# ----------------------------------------------------------------------------- committed teacher logits
