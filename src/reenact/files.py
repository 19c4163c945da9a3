"""Writing results so that a crash, a full disk or Ctrl-C never leaves a partial file.

:func:`atomic_write` is the one way this package writes anything a user keeps (embeddings,
checkpoints, videos, images, reports, model folders): the writer fills a hidden temporary path
in the destination's folder, which is renamed onto the destination only once it is complete.
``os.replace`` is atomic on one filesystem, so the destination is either the old complete file
or the new complete file, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import WriteError

__all__ = ["atomic_write", "write_error"]


def write_error(path: Path, exc: OSError | str) -> WriteError:
    """The one-line :class:`WriteError` for ``path``: what happened and what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        reason = f"{os.strerror(errno.ENOSPC)}; free some space or write elsewhere"
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"{os.strerror(exc.errno)}; choose a writable location"
    elif isinstance(exc, OSError) and str(exc).strip():
        reason = str(exc).strip().splitlines()[0]
    else:
        reason = str(exc) or type(exc).__name__
    return WriteError(f"cannot write {path}: {reason}")


#: What writers that do not raise ``OSError`` say when the disk fills up: safetensors'
#: ``SafetensorError`` carries the OS message, torch.save's ``RuntimeError`` only this.
_FULL_DISK_TEXT = (os.strerror(errno.ENOSPC), "file write failed")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _plain_permissions(path: Path) -> None:
    """Give file ``path`` the mode a plain ``open()`` would (0666 minus the umask).

    Some writers (safetensors) create files 0600, which makes a result shared on a team machine
    unreadable to everyone but its author.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _replace(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` onto ``path``. A folder replaces an existing folder by two renames
    (the old one is moved aside first and deleted last, so a crash in between leaves the old one
    as ``.<name>.old-*``, never a mix of old and new contents)."""
    if not tmp.is_dir():
        _plain_permissions(tmp)
        os.replace(tmp, path)
        return
    if path.exists() and not path.is_dir():
        raise IsADirectoryError(errno.EEXIST, "it exists and is a file, but a folder is written")
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)  # put the previous result back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly it becomes ``path``.

    The writer may create a file or a folder at the yielded path. The temp name is hidden
    (``.<name>.tmp-<pid>-<rand><suffix>``) and keeps the real suffix, so writers that sniff it
    (video encoders, PIL) still work. Missing parent folders are created. On any exception the
    temp is removed and ``path`` is untouched; an ``OSError`` (full disk, no permission) becomes
    a one-line :class:`~reenact.errors.WriteError` naming ``path`` (which is still an
    ``OSError``), anything else propagates unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _replace(tmp, path)
    except WriteError:
        raise
    except OSError as e:
        raise write_error(path, e) from None
    except Exception as e:
        if any(text in str(e) for text in _FULL_DISK_TEXT):
            raise write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    finally:
        _remove(tmp)
