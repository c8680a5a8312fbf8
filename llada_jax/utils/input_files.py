"""Text files a user names on the command line (prompts, items to score): every way such a path can be wrong
(missing, a folder, not text, unreadable) is one sentence naming the flag and what it should be."""
from __future__ import annotations

import os

from llada_jax.config import ConfigError


def read_text(path: str, *, flag: str, what: str) -> str:
    """The UTF-8 text of the file `flag` names; `what` describes the file expected ("a text file with ...")."""
    if not os.path.exists(path):
        raise ConfigError(f"{flag}={path} does not exist; pass {what}")
    if os.path.isdir(path):
        raise ConfigError(f"{flag}={path} is a folder; pass {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag}={path} is not UTF-8 text (byte {e.start} cannot be decoded); pass {what}") from None
    except OSError as e:
        raise ConfigError(f"{flag}={path} cannot be read ({e.strerror}); pass {what}") from None
