"""Where fastloss's compiled kernels are cached on disk, and how a broken cache degrades.

Numba's default for a function in an installed package is the package's own ``__pycache__``. Kernels
written there outlive the package: ``pip`` does not know them, so after a reinstall (an editable one in
particular) those folders are left behind as a namespace package that hides the real ``fastloss``.
:func:`configure` therefore puts a locator of its own in front of Numba's, used only for fastloss's
source files (other Numba users in the process keep Numba's behaviour):

- the directory is ``NUMBA_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/fastloss/<version>`` (default
  ``~/.cache/fastloss/<version>``; ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows);
  directories it creates are private (0700);
- a directory that cannot be used (not a directory, not writable) or that other users can write (Numba
  unpickles what it finds there) is refused: the kernels compile in memory, never in the package;
- a cache entry that cannot be read (truncated, garbled) is compiled again and rewritten, and a failed
  write (a full disk) leaves the kernel compiled in memory.

Each fault gives one ``RuntimeWarning`` per process, never a failed call. It must run before the first
``cache=True`` dispatcher is created: Numba picks a function's locator when caching is enabled.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_version = "0"
_warned = False
_saves_failed = False
_root_problem: dict[str, str | None] = {}  # cache root -> why it is refused (None: usable)
_checked_dirs: dict[str, str | None] = {}  # entry directory -> why it is refused (None: usable)


def default_dir(version: str | None = None) -> str:
    """The per-user cache directory for this fastloss version (ignores ``NUMBA_CACHE_DIR``)."""
    version = version or _version
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        base = xdg
    elif sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(os.path.expanduser("~"), "Library", "Caches")
    else:
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastloss", version)


def cache_dir() -> str:
    """The directory fastloss's kernels are cached in: ``NUMBA_CACHE_DIR`` when set, else :func:`default_dir`."""
    from numba.core import config

    return config.CACHE_DIR or default_dir()


def _warn(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"fastloss: {message}", RuntimeWarning, stacklevel=3)


def _private_makedirs(path: str) -> None:
    """``os.makedirs`` whose new directories are 0700 whatever the umask (an existing one is left as it is)."""
    missing = []
    head = path
    while head and not os.path.lexists(head):
        missing.append(head)
        head, tail = os.path.split(head)
        if not tail:
            break
    os.makedirs(path, mode=0o700, exist_ok=True)
    for p in missing:
        try:
            os.chmod(p, 0o700)
        except OSError:
            pass


def _refusal(path: str) -> str | None:
    """Why ``path`` (an existing entry) cannot hold kernels, or None: not a directory, or others can write it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be used ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if os.name != "nt":
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return ("can be written by other users and Numba unpickles what it finds there "
                    f"(make it private: chmod go-w '{path}')")
        if st.st_uid != os.geteuid():
            return "belongs to another user"
    return None


def _check_root(root: str) -> str | None:
    if root not in _root_problem:
        problem = None
        try:
            if not os.path.lexists(root):
                _private_makedirs(root)
        except OSError as exc:
            problem = f"cannot be created ({exc.strerror or exc})"
        _root_problem[root] = problem or _refusal(root)
    return _root_problem[root]


def _check_entry_dir(path: str) -> str | None:
    """Create (0700) and vet a per-source-directory folder under the root, once per process."""
    if path not in _checked_dirs:
        problem = None
        try:
            _private_makedirs(path)
            st = os.stat(path)
            if os.name != "nt" and st.st_uid == os.geteuid() and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.chmod(path, 0o700)  # ours, under a private root: made by an older release or a lax umask
            problem = _refusal(path)
            if problem is None:
                tempfile.TemporaryFile(dir=path).close()  # writable? (what Numba's own locators check)
        except OSError as exc:
            problem = f"is not writable ({exc.strerror or exc})"
        _checked_dirs[path] = problem
    return _checked_dirs[path]


def _make_locator_class(caching):
    class FastlossCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """The cache locator of fastloss's own source files (see the module docstring)."""

        def __init__(self, py_func, py_file, root: str):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))
            self.problem: str | None = None

        def get_cache_path(self):
            return self._cache_path

        def ensure_cache_path(self):
            problem = _check_entry_dir(self._cache_path)
            if not problem:  # again: `fastloss cache clear` in another process may have removed it since
                _private_makedirs(self._cache_path)
            if problem:
                raise OSError(f"{self._cache_path} {problem}")

        @classmethod
        def from_function(cls, py_func, py_file):
            if not (os.path.abspath(py_file).startswith(_PACKAGE_DIR + os.sep) and os.path.exists(py_file)):
                return None  # not ours: Numba's own locators decide
            root = cache_dir()
            self = cls(py_func, py_file, root)
            problem = _check_root(root)
            if problem:
                self.problem = f"the kernel cache directory {root} {problem}"
            else:
                sub = _check_entry_dir(self._cache_path)
                if sub:
                    self.problem = f"the kernel cache directory {self._cache_path} {sub}"
            if self.problem:
                _warn(f"{self.problem}; compiling kernels in memory (set NUMBA_CACHE_DIR to a private, "
                      "writable directory to keep them between runs)")
            return self

    return FastlossCacheLocator


_Locator = None


def _ours(cache_obj):
    """The fastloss locator behind a Numba ``Cache`` object, or None when the cache is not fastloss's."""
    impl = getattr(cache_obj, "_impl", None)
    locator = getattr(impl, "_locator", None)
    return locator if _Locator is not None and isinstance(locator, _Locator) else None


def _discard_index(cache_obj) -> None:
    """Remove a function's index so that its entries are compiled and written again."""
    path = getattr(getattr(cache_obj, "_cache_file", None), "_index_path", None)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _wrap_cache_class(caching) -> None:
    cls = caching.Cache
    if getattr(cls, "_fastloss_wrapped", False):
        return
    real_load, real_save = cls.load_overload, cls.save_overload

    def load_overload(self, sig, target_context):
        locator = _ours(self)
        if locator is None:
            return real_load(self, sig, target_context)
        if locator.problem:
            return None
        try:
            return real_load(self, sig, target_context)
        except Exception as exc:  # EOFError, UnpicklingError, ...: whatever a damaged file raises
            _discard_index(self)
            _warn(f"a cached kernel in {locator.get_cache_path()} could not be read ({type(exc).__name__}: {exc}); "
                  "it is compiled again and the cache entry rewritten")
            return None

    def save_overload(self, sig, data):
        global _saves_failed
        locator = _ours(self)
        if locator is None:
            return real_save(self, sig, data)
        if locator.problem or _saves_failed:
            return None
        try:
            return real_save(self, sig, data)
        except Exception as exc:  # ENOSPC, EDQUOT, a directory removed meanwhile, ...
            _saves_failed = True  # one fault is enough: the rest of this process keeps kernels in memory
            _discard_index(self)
            _warn(f"compiled kernels cannot be written to {locator.get_cache_path()} ({exc}); "
                  "they are kept in memory for this process")
            return None

    cls.load_overload = load_overload
    cls.save_overload = save_overload
    cls._fastloss_wrapped = True


def configure(version: str) -> None:
    """Route fastloss's kernels to the per-user cache; call before any ``cache=True`` dispatcher exists.

    Defensive about Numba's internals: if they are not what this expects, Numba's defaults stay.
    """
    global _version, _Locator
    _version = version
    try:
        from numba.core import caching

        if _Locator is None:
            _Locator = _make_locator_class(caching)
        if _Locator not in caching.CacheImpl._locator_classes:
            caching.CacheImpl._locator_classes.insert(0, _Locator)
        _wrap_cache_class(caching)
    except (ImportError, AttributeError, TypeError) as exc:  # a Numba whose cache internals differ
        _warn(f"cannot route compiled kernels to the per-user cache ({exc}); Numba's default cache is used")


def _entry_dirs(root: str) -> list[str]:
    """The folders under ``root`` that hold fastloss's kernels.

    All of them for fastloss's own directory; under a ``NUMBA_CACHE_DIR`` that other code may share,
    only those of this installation's source directories.
    """
    if not os.path.isdir(root):
        return []
    if root != default_dir():
        from numba.core import caching

        names = set()
        for dirpath, dirnames, filenames in os.walk(_PACKAGE_DIR):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if any(f.endswith(".py") for f in filenames):
                names.add(caching._CacheLocator.get_suitable_cache_subpath(os.path.join(dirpath, "x.py")))
        return sorted(os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n)))
    return sorted(os.path.join(root, n) for n in os.listdir(root))


def info() -> dict:
    """``{"path", "files", "bytes"}`` of the kernel cache in use."""
    root = cache_dir()
    files = size = 0
    for d in _entry_dirs(root):
        for dirpath, _, filenames in os.walk(d):
            for f in filenames:
                try:
                    size += os.lstat(os.path.join(dirpath, f)).st_size
                    files += 1
                except OSError:
                    pass
    return {"path": root, "files": files, "bytes": size}


def clear() -> dict:
    """Delete fastloss's cached kernels (only those under a shared ``NUMBA_CACHE_DIR``); returns the prior info."""
    before = info()
    for d in _entry_dirs(before["path"]):
        if os.path.isdir(d) and not os.path.islink(d):
            shutil.rmtree(d, ignore_errors=True)
        else:
            try:
                os.unlink(d)
            except OSError:
                pass
    _checked_dirs.clear()
    return before
