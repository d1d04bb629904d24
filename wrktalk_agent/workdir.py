"""The work dir is the agent's own: where it is by default, and the check that it is private.

Release artifacts, their ``.env`` and ``values.yaml`` are written below the work dir and
securely deleted from it. A directory another user owns or can write would let that user
read those secrets, or plant a link that turns the clean-up into a deletion of their
choosing. So, the way OpenSSH's ``StrictModes`` treats ``~/.ssh``, the agent refuses

* a work dir that is not a directory owned by the agent's user, or that its group or
  others can write;
* a parent directory (every one up to ``/``) owned by anyone but the agent's user or
  root, or writable by its group or others without the sticky bit (``/tmp`` is fine:
  there nobody may rename or delete another user's entries);
* a link on the way that is owned by anyone but the agent's user or root (the
  directories it leads to are checked as well).

Missing directories are created with mode 0700. The check runs at start-up (``run``) and
in ``wrktalk-agent check``; :func:`check_work_dir` raises :class:`WorkDirError` with one
line naming the path and its owner.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

__all__ = ["WorkDirError", "check_work_dir", "default_work_dir", "owner_name"]

#: The default for root (the image sets the same path for its own user).
SYSTEM_WORK_DIR = Path("/var/lib/wrktalk-agent/work")


class WorkDirError(Exception):
    """The work dir is not private; the message is one line naming the path and owner."""


def default_work_dir() -> Path:
    """``/var/lib/wrktalk-agent/work`` for root, else ``$XDG_STATE_HOME/wrktalk-agent/work``
    (``~/.local/state/wrktalk-agent/work`` when ``XDG_STATE_HOME`` is unset or relative,
    as the XDG base directory specification says)."""
    if os.geteuid() == 0:
        return SYSTEM_WORK_DIR
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "wrktalk-agent" / "work"


def owner_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid without a passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_work_dir(work_dir: Path, *, check_parents: bool = True, create: bool = True) -> Path:
    """Refuse a work dir another user owns or can write (see the module docstring), after
    creating what is missing (0700) when ``create``. Returns the absolute path."""
    path = Path(os.path.abspath(work_dir))
    uid = os.geteuid()
    _check_links(path, uid, work_dir)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if check_parents:
        real = Path(os.path.realpath(existing))
        chain = [real, *real.parents] if existing != path else list(real.parents)
        for directory in reversed(chain):
            _check_parent(directory, uid, work_dir)
    if existing != path:
        if not create:
            raise WorkDirError(f"work dir {work_dir} does not exist")
        _create(existing, path)
        return check_work_dir(work_dir, check_parents=check_parents, create=False)
    _check_own(Path(os.path.realpath(path)), uid, work_dir)
    return path


def _check_links(path: Path, uid: int, work_dir: Path) -> None:
    for component in [*reversed(path.parents), path]:
        try:
            info = os.lstat(component)
        except (FileNotFoundError, NotADirectoryError):
            return  # the rest is created (or cannot be, which is said then)
        except OSError as exc:
            raise WorkDirError(
                f"work dir {work_dir}: cannot inspect {component}: {exc.strerror or exc}"
            ) from None
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, uid):
            raise WorkDirError(
                f"work dir {work_dir}: {component} is a link owned by {owner_name(info.st_uid)}, "
                f"not by {owner_name(uid)} or root; use a directory the agent owns"
            )


def _check_parent(directory: Path, uid: int, work_dir: Path) -> None:
    info = _stat(directory, work_dir)
    if info.st_uid not in (0, uid):
        raise WorkDirError(
            f"work dir {work_dir}: parent {directory} is owned by {owner_name(info.st_uid)}, "
            f"not by {owner_name(uid)} or root; use a directory the agent owns"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise WorkDirError(
            f"work dir {work_dir}: parent {directory} (owner {owner_name(info.st_uid)}) is "
            f"writable by {_who(info.st_mode)} without the sticky bit "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod go-w {directory}"
        )


def _check_own(directory: Path, uid: int, work_dir: Path) -> None:
    info = _stat(directory, work_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise WorkDirError(f"work dir {work_dir}: {directory} is not a directory")
    if info.st_uid != uid:
        raise WorkDirError(
            f"work dir {work_dir}: {directory} is owned by {owner_name(info.st_uid)}, not by "
            f"the agent's user {owner_name(uid)}; remove it or use a directory the agent owns"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkDirError(
            f"work dir {work_dir}: {directory} (owner {owner_name(info.st_uid)}) is writable "
            f"by {_who(info.st_mode)} (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"chmod 0700 {directory}"
        )


def _stat(directory: Path, work_dir: Path) -> os.stat_result:
    try:
        return os.stat(directory)
    except OSError as exc:
        raise WorkDirError(
            f"work dir {work_dir}: cannot inspect {directory}: {exc.strerror or exc}"
        ) from None


def _who(mode: int) -> str:
    both = mode & stat.S_IWGRP and mode & stat.S_IWOTH
    return "its group and others" if both else "its group" if mode & stat.S_IWGRP else "others"


def _create(existing: Path, path: Path) -> None:
    """Each missing directory from ``existing`` down to ``path``, mode 0700 (``mkdir -p``
    would give the parents the umask's mode, maybe group-writable)."""
    missing = [path, *path.parents]
    missing = missing[: missing.index(existing)]
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile (another agent): checked like any other
        except OSError as exc:
            raise WorkDirError(
                f"work dir {path} cannot be created: {directory}: {exc.strerror or exc}"
            ) from None
