"""Safe destinations for every command that writes: never delete or overwrite what a user put there.

A command may write into a folder that does not exist yet or is empty. A non-empty folder is refused with one
sentence unless `--overwrite` is given, and even then only the files the command itself writes are replaced;
anything else in the folder stays. A path naming a file where a folder is expected (or the reverse) is always
refused: no flag makes llada-jax delete a user's file.
"""
from __future__ import annotations

import os

from etils import epath

from llada_jax.config import ConfigError


def _path(path) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _named(flag: str, path) -> str:
    """`--out=DIR` for a command-line flag, `the export folder DIR` for a description."""
    return f"{flag}={path}" if flag.startswith("--") else f"{flag} {path}"


def check_folder(path, *, flag: str, overwrite: bool) -> epath.Path:
    """The folder `path` if a command may write into it; else ConfigError naming the flag and the fix."""
    folder = _path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{_named(flag, path)} is a file, not a folder; name a new or empty folder instead")
    if folder.exists() and not overwrite:
        held = sorted(p.name for p in folder.iterdir())
        if held:
            listed = ", ".join(held[:3]) + (" ..." if len(held) > 3 else "")
            raise ConfigError(f"{_named(flag, path)} is not empty (it holds {listed}); name a new or empty folder, or pass "
                              "--overwrite to replace only the files llada-jax writes there")
    return folder


def check_file(path, *, flag: str, overwrite: bool) -> epath.Path:
    """The file `path` if a command may write it: it must not be a folder, nor an existing file without --overwrite."""
    target = _path(path)
    if target.is_dir():
        raise ConfigError(f"{flag}={path} is a folder; name a file to write")
    if target.exists() and not overwrite:
        raise ConfigError(f"{flag}={path} already exists; choose another name or pass --overwrite to replace it")
    if not target.parent.exists():
        raise ConfigError(f"{flag}={path}: the folder {target.parent} does not exist; create it first")
    return target


def swap_in(staging: epath.Path, folder: epath.Path, names) -> None:
    """Moves the complete entries `names` from `staging` into `folder`, replacing only those entries.

    Each old entry is renamed aside before the new one is renamed in and deleted only afterwards, so a crash
    leaves the old or the new entry (or the aside copy, which the next swap removes), never a half-written one.
    """
    if not folder.exists():
        staging.rename(folder)
        return
    for name in names:
        new, old, aside = staging / name, folder / name, folder / f"{name}.replaced"
        if aside.exists():
            _remove(aside)
        if old.exists():
            old.rename(aside)
        if new.exists():
            new.rename(old)
        if aside.exists():
            _remove(aside)
    staging.rmtree()


def _remove(path: epath.Path) -> None:
    if path.is_dir():
        path.rmtree()
    else:
        path.unlink()
