"""Turning library exceptions into the one-sentence messages users get."""
from __future__ import annotations

import errno
import os
import re

# what the operating system said, inside TensorStore's and Orbax's messages
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# errors that come from the machine or the storage, not from a bug: said in one sentence, never as a traceback
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO,
                                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG,
                                errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.ETXTBSY, errno.ELOOP})


def first_line(error: BaseException, limit: int = 160) -> str:
    """The gist of an exception for a one-sentence message (Orbax/TensorStore errors span many lines)."""
    text = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
    text = text.split(" [source locations=")[0].split("See full TensorStore details")[0].strip()
    return (text[:limit] + "...") if len(text) > limit else text


def storage_reason(error: BaseException) -> str:
    """Why a read or write failed, as the operating system says it ("No space left on device") when it can be
    found under the library's wrappers, else the first line of the error."""
    cause = error
    while True:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        code = _OS_ERROR_CODE.search(str(cause))
        if code:
            return os.strerror(int(code.group(1)))
        if cause.__cause__ is None and cause.__context__ is None:
            return first_line(error)
        cause = cause.__cause__ or cause.__context__


def environment_sentence(error: OSError) -> str:
    """One sentence for an OSError the machine raised: what failed, where, and what to do about it."""
    where = f" {error.filename}" if error.filename else ""
    fixes = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (the disk quota is full)",
             errno.EROFS: "choose a location on writable storage", errno.EACCES: "choose a location you may write to",
             errno.EPERM: "choose a location you may write to", errno.ENOENT: "check the path",
             errno.ENOTDIR: "a file stands where a folder is expected: check the path",
             errno.EISDIR: "a folder stands where a file is expected: check the path"}
    fix = fixes.get(error.errno, "check the path and the storage")
    return f"cannot use{where}: {error.strerror or first_line(error)}; {fix}, then run the command again"


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception under the library's wrappers (TensorStore's own message under Orbax's "Encountered
    error while reading array index ..."), which says what is wrong with the file."""
    seen = {id(error)}
    while (error.__cause__ or error.__context__) is not None and id(error.__cause__ or error.__context__) not in seen:
        error = error.__cause__ or error.__context__
        seen.add(id(error))
    return error
