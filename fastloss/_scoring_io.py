"""File readers and writers for batch scoring: ``.npy``, ``.npz`` members, Parquet columns.

Readers are *row sources* (``shape``, ``dtype``, ``read(lo, hi)``) that hold at most one chunk in
memory:

* ``.npy``: each read maps only the requested rows (``numpy.memmap`` with an offset), so neither the
  resident memory nor the address space grows with the file.
* ``.npz`` member: an uncompressed (``numpy.savez``) member is mapped the same way at its offset in
  the archive; a compressed one (``savez_compressed``) is decompressed as a stream.
* Parquet column (pyarrow): decoded one row group at a time; list and fixed-size-list columns give
  ``(N, width)`` arrays (logits), every list of the same length.

Readers pickle as their path and position (no open handles), so Dask workers can reopen them.
Writers write to a temporary file in the destination's directory; :meth:`commit` renames it into
place, :meth:`abort` deletes it, so an interrupted run leaves no partial output behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
import zipfile

import numpy as np

from .scoring import ScoreError


def _npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        else:  # 2.0 and 3.0 share the header layout (3.0 only allows utf-8 in it)
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError) as exc:
        raise ScoreError(f"{where}: not a valid .npy array ({str(exc).splitlines()[0]})") from None
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ScoreError(f"{where}: corrupt .npy header: shape {shape} has a negative dimension")
    return shape, bool(fortran), np.dtype(dtype)


class NpySource:
    """Rows of a ``.npy`` file or of an ``.npz`` member."""

    def __init__(self, path: str, member: str | None = None, label: str | None = None):
        self.path = path
        self.member = member
        self.label = label or (f"{path}:{member}" if member else path)
        self._stream = None
        self._stream_row = 0
        self._full = None
        if member is None:
            self.base = 0
            self.compressed = False
            with open(path, "rb") as f:
                self.shape, self.fortran, self.dtype = _npy_header(f, self.label)
                self.data_offset = f.tell()
            self._check_size(os.path.getsize(path) - self.data_offset)
        else:
            self._open_member()

    def _nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a corrupt header cannot overflow

    def _check_size(self, available: int) -> None:
        """A header that claims more data than the file holds (a corrupt or truncated file) is an error now."""
        needed = self._nbytes()
        if available < needed:
            raise ScoreError(f"{self.label}: the header says shape {self.shape} ({needed:,} bytes of data) but the "
                             f"file holds {max(available, 0):,} bytes: truncated or corrupt")

    def _open_member(self) -> None:
        try:
            zf = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise ScoreError(f"{self.path}: not a valid .npz archive") from None
        with zf:
            names = zf.namelist()
            name = self.member + ".npy" if self.member + ".npy" in names else self.member
            if name not in names:
                members = ", ".join(n[:-4] if n.endswith(".npy") else n for n in names)
                raise ScoreError(f"{self.path} has no member {self.member!r} (members: {members})")
            info = zf.getinfo(name)
            self.zip_name = name
            self.compressed = info.compress_type != zipfile.ZIP_STORED
            if self.compressed:
                with zf.open(name) as f:
                    self.shape, self.fortran, self.dtype = _npy_header(f, self.label)
                    self.data_offset = f.tell()
                self._check_size(info.file_size - self.data_offset)
                return
        with open(self.path, "rb") as f:  # a stored member: a plain .npy inside the archive
            f.seek(info.header_offset)
            local = f.read(30)
            self.base = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(
                local[28:30], "little"
            )
            f.seek(self.base)
            self.shape, self.fortran, self.dtype = _npy_header(f, self.label)
            self.data_offset = f.tell()
        self._check_size(info.file_size - (self.data_offset - self.base))

    @property
    def _row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def read(self, lo: int, hi: int) -> np.ndarray:
        n = hi - lo
        rest = self.shape[1:]
        if n <= 0 or self._row_bytes == 0:
            return np.empty((max(n, 0), *rest), self.dtype)
        if self.fortran and len(self.shape) > 1:
            # column-major rows are not contiguous: map the whole file (or load a member) once; memory is
            # then not bounded by the chunk (rare: NumPy and most writers store row-major arrays)
            if self._full is None:
                self._full = (np.load(self.path, mmap_mode="r") if self.member is None
                              else np.load(self.path)[self.member])
            return np.ascontiguousarray(self._full[lo:hi])
        if self.compressed:
            return self._read_stream(lo, n)
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.data_offset + lo * self._row_bytes,
                       shape=(n, *rest))
        return np.asarray(mm)

    def _read_stream(self, lo: int, n: int) -> np.ndarray:
        rb = self._row_bytes
        if self._stream is None or lo < self._stream_row:
            self._close_stream()
            zf = zipfile.ZipFile(self.path)
            self._stream = (zf, zf.open(self.zip_name))
            self._stream[1].read(self.data_offset)
            self._stream_row = 0
        f = self._stream[1]
        skip = (lo - self._stream_row) * rb
        while skip > 0:
            skip -= len(f.read(min(skip, 1 << 24)))
        buf = bytearray(n * rb)
        got = f.readinto(memoryview(buf))
        if got != len(buf):
            raise ScoreError(f"{self.label}: truncated member")
        self._stream_row = lo + n
        return np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.shape[1:])

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream[0].close()
            self._stream = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_stream"] = None
        state["_stream_row"] = 0
        state["_full"] = None
        return state


class ParquetColumn:
    """Rows of one Parquet column, decoded one row group at a time."""

    def __init__(self, path: str, column: str | None, label: str | None = None):
        pq = _pyarrow_parquet()
        import pyarrow as pa

        self.path = path
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise ScoreError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
        names = pf.schema_arrow.names
        if column is None:
            if len(names) != 1:
                raise ScoreError(f"{path}: name a column as {path}:COLUMN (columns: {', '.join(names)})")
            column = names[0]
        if column not in names:
            raise ScoreError(f"{path} has no column {column!r} (columns: {', '.join(names)})")
        self.column = column
        self.label = label or f"{path}:{column}"
        typ = pf.schema_arrow.field(column).type
        self.width: int | None = None
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
            value_type = typ.value_type
            self.width = typ.list_size if pa.types.is_fixed_size_list(typ) else -1
        else:
            value_type = typ
        if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type)):
            raise ScoreError(f"{self.label}: unsupported type {typ} (expected numbers or lists of numbers)")
        self.dtype = np.dtype(value_type.to_pandas_dtype())
        md = pf.metadata
        counts = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self.starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        self.n = int(self.starts[-1])
        self._pf = pf
        self._cached: tuple[int, np.ndarray] | None = None
        if self.width == -1:  # variable-length lists: every row must have the first row's length
            first = next((i for i, c in enumerate(counts) if c), None)
            self.width = 0 if first is None else int(self._group(first).shape[1])
        self.shape = (self.n,) if self.width is None else (self.n, self.width)

    def _file(self):
        if self._pf is None:
            self._pf = _pyarrow_parquet().ParquetFile(self.path)
        return self._pf

    def _group(self, i: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        import pyarrow as pa

        arr = self._file().read_row_group(i, columns=[self.column]).column(0).combine_chunks()
        start = int(self.starts[i])
        if arr.null_count:
            row = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
            raise ScoreError(f"{self.label}: missing value at row {start + row}")
        if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            width = self.width if self.width not in (None, -1) else None
            if not pa.types.is_fixed_size_list(arr.type):
                lengths = np.diff(np.asarray(arr.offsets))
                if width is None:
                    width = int(lengths[0]) if lengths.size else 0
                bad = np.flatnonzero(lengths != width)
                if bad.size:
                    raise ScoreError(
                        f"{self.label}: row {start + int(bad[0])} has {int(lengths[bad[0]])} values, expected {width}"
                    )
            values = arr.flatten()
            if values.null_count:
                k = int(np.flatnonzero(np.asarray(values.is_null()))[0])
                raise ScoreError(f"{self.label}: missing value in row {start + k // max(width, 1)}")
            out = values.to_numpy(zero_copy_only=False).reshape(len(arr), width)
        else:
            out = arr.to_numpy(zero_copy_only=False)
        out = np.asarray(out, dtype=self.dtype)
        self._cached = (i, out)
        return out

    def read(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.empty((0, *self.shape[1:]), self.dtype)
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        pieces = []
        g = first
        while g < len(self.starts) - 1 and self.starts[g] < hi:
            a = self._group(g)
            s = int(self.starts[g])
            pieces.append(a[max(lo - s, 0) : min(hi - s, a.shape[0])])
            g += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pf"] = None
        state["_cached"] = None
        return state


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ScoreError("Parquet files need pyarrow: pip install 'fastloss[parquet]'") from None
    return pq


_NPY = (".npy",)
_NPZ = (".npz",)
_PARQUET = (".parquet", ".pq")


def open_input(text: str, label: str):
    """A row source for ``PATH``, ``PATH.npz:member`` or ``PATH.parquet:column``."""
    path, member = text, None
    if not os.path.exists(path) and ":" in text:
        path, member = text.rsplit(":", 1)
    if not os.path.exists(path):
        raise ScoreError(f"{label}: no such file: {path}")
    if os.path.isdir(path):
        raise ScoreError(f"{label}: {path} is a directory")
    ext = os.path.splitext(path)[1].lower()
    if ext in _NPY:
        if member is not None:
            raise ScoreError(f"{label}: a .npy file has no members ({text})")
        return NpySource(path, label=f"{label} ({path})")
    if ext in _NPZ:
        if member is None:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if len(names) != 1:
                members = ", ".join(n.removesuffix(".npy") for n in names)
                raise ScoreError(f"{label}: name a member as {path}:NAME (members: {members})")
            member = names[0].removesuffix(".npy")
        return NpySource(path, member, label=f"{label} ({path}:{member})")
    if ext in _PARQUET:
        return ParquetColumn(path, member, label=f"{label} ({path}:{member})" if member else None)
    raise ScoreError(f"{label}: unsupported file type {ext or '(none)'} (expected .npy, .npz or .parquet)")


# -- outputs ------------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # hard links and symlinks too
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: dict[str, str], inputs: dict[str, str], overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would destroy data or each other.

    ``outputs`` and ``inputs`` map option names (``--summary``, ``--pred``) to paths. An output may not
    be an input or another output, nor an existing directory; an existing file is replaced only with
    ``overwrite``.
    """
    seen: list[tuple[str, str]] = []
    for opt, path in outputs.items():
        for other_opt, other in inputs.items():
            if _same_file(path, other):
                raise ScoreError(f"{opt} {path} is the input {other_opt}; write the output to another file")
        for other_opt, other in seen:
            if _same_file(path, other):
                raise ScoreError(f"{opt} and {other_opt} are the same file ({path}); give each its own")
        seen.append((opt, path))
        if os.path.isdir(path):
            raise ScoreError(f"{opt} {path} is a directory; name a file")
        if os.path.lexists(path) and not overwrite:
            raise ScoreError(f"{opt} {path} exists; pass --overwrite to replace it")


class _AtomicFile:
    """A temporary file next to ``path``, renamed onto it by :meth:`commit`."""

    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ScoreError(f"output directory does not exist: {directory}")
        if os.path.isdir(path):
            raise ScoreError(f"{path} is a directory; name a file")
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        os.close(fd)

    def finish(self) -> None:
        """Complete the temporary file (everything that can fail short of the rename)."""

    def _rename(self) -> None:
        try:  # a file that is replaced keeps its permissions (a private 0600 result stays private)
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            # mkstemp creates the file private (0600); give a new file the permissions a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(self.tmp, mode)
        os.replace(self.tmp, self.path)

    def commit(self) -> None:
        self.finish()
        self._rename()

    def abort(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class NpySink(_AtomicFile):
    """Per-sample losses as a float64 ``.npy`` vector, written chunk by chunk in row order."""

    def __init__(self, path: str, n: int):
        super().__init__(path)
        self.n = n
        self.written = 0
        self._f = open(self.tmp, "wb")  # closed by commit() or abort()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f8")), "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(self._f, header)

    def write(self, lo: int, values: np.ndarray) -> None:
        if lo != self.written:
            raise RuntimeError(f"rows must be written in order (expected row {self.written}, got {lo})")
        v = np.ascontiguousarray(values, dtype="<f8")
        self._f.write(memoryview(v).cast("B"))
        self.written += v.shape[0]

    def reader(self) -> NpySource:
        self._f.flush()
        return NpySource(self.tmp, label=self.path)

    def finish(self) -> None:
        self._f.close()
        if self.written != self.n:
            raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n} rows")

    def abort(self) -> None:
        self._f.close()
        super().abort()


class ParquetSink(_AtomicFile):
    """Per-sample losses as a Parquet file with one float64 column ``loss`` (a row group per chunk)."""

    def __init__(self, path: str, n: int):
        pq = _pyarrow_parquet()
        import pyarrow as pa

        super().__init__(path)
        self.n = n
        self.written = 0
        self._pa = pa
        self._writer = pq.ParquetWriter(self.tmp, pa.schema([("loss", pa.float64())]))

    def write(self, lo: int, values: np.ndarray) -> None:
        if lo != self.written:
            raise RuntimeError(f"rows must be written in order (expected row {self.written}, got {lo})")
        self._writer.write_table(self._pa.table({"loss": np.asarray(values, np.float64)}))
        self.written += len(values)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def reader(self) -> ParquetColumn:
        self._close()  # the footer must be written before the file can be read
        return ParquetColumn(self.tmp, "loss", label=self.path)

    def finish(self) -> None:
        self._close()
        if self.written != self.n:
            raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n} rows")

    def abort(self) -> None:
        try:
            self._close()
        finally:
            super().abort()


class JsonSink(_AtomicFile):
    def __init__(self, path: str):
        super().__init__(path)

    def write_json(self, obj) -> None:
        with open(self.tmp, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")


def commit_all(sinks: list) -> None:
    """Rename every sink's temporary file into place: all of them, or (on a failure) none.

    Each sink is finished first; files that a rename replaces are kept as hard links until every
    rename succeeded, so a failure part-way puts the previous files (or no file) back. The caller
    aborts the sinks (removes their temporaries) when this raises.
    """
    for s in sinks:
        s.finish()
    done: list[tuple[_AtomicFile, str | None]] = []
    try:
        for s in sinks:
            backup = None
            if os.path.lexists(s.path):
                backup = f"{s.tmp}.previous"
                try:
                    os.link(s.path, backup)
                except OSError:  # no hard links on this file system: a copy
                    shutil.copy2(s.path, backup)
            try:
                s._rename()
            except BaseException:
                if backup is not None:
                    os.unlink(backup)
                raise
            done.append((s, backup))
    except BaseException:
        for s, backup in reversed(done):
            try:
                if backup is None:
                    os.unlink(s.path)
                else:
                    os.replace(backup, s.path)
            except OSError:
                pass
        raise
    for _, backup in done:
        if backup is not None:
            try:
                os.unlink(backup)
            except OSError:
                pass


def open_output(path: str, n: int):
    """A per-sample sink for ``path`` (``.npy`` or ``.parquet``)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _NPY:
        return NpySink(path, n)
    if ext in _PARQUET:
        return ParquetSink(path, n)
    raise ScoreError(f"--per-sample: unsupported file type {ext or '(none)'} (expected .npy or .parquet)")
