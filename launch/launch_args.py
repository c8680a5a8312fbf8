"""Command-line splitting shared by the launch scripts: `SCRIPT [flags] -- [llada-jax config overrides]`."""
from __future__ import annotations


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own flags, the overrides after `--`). `--dry-run` counts wherever it appears, even
    after `--`, so a dry run can never turn into a real one by a misplaced flag."""
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    own, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    return own + (["--dry-run"] if dry_run else []), overrides
