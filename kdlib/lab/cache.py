"""Teachers kept between runs: the cache of their weights and logits (:class:`TeacherCache`, outside
the repository) and the committed float16 logits (:class:`CommittedTeachers`, under
``results/teachers/``) from which any student can be rerun without its teacher."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlib.lab.records import record_problem
from kdlib.lab.store import ResultsFileError, atomic_write, dumps, file_lock


class CacheError(ValueError):
    """The teacher cache directory cannot be used (not a directory, or not writable when it must be)."""


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
        npy, rec = self.paths(key)
        try:
            record = json.loads(rec.read_text())
            data = npy.read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsFileError(f"cannot read the committed teacher {key} in {self.dir}: {e}") from None
        problem = record_problem(record)
        if problem is not None:
            raise ResultsFileError(f"{rec} is not a teacher record ({problem}): `git checkout -- "
                                   "results/teachers` restores the committed teachers")
        info = record["provenance"].get("teacher_logits", {})
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
