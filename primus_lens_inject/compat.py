"""The wandb versions the injector knows: the one place that says which it patches.

``capture.patch`` decides from these whether to patch the wandb a program imported; ``doctor``
says from the same facts what a training process would do with the wandb installed here.
"""

from __future__ import annotations

import re
from typing import Tuple

MIN_WANDB = (0, 12, 21)  # older versions lack the patch points: the injector leaves them alone
_NEWEST_TESTED_WANDB = (0, 31, 0)  # newer ones are patched too (the patch points are stable)


def parse_version(text: object) -> Tuple[int, ...]:
    """(major, minor, patch) from a version string; "0.31.0rc1" is (0, 31, 0)."""
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def dotted(version: Tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def supported(version: Tuple[int, ...]) -> bool:
    """Whether the injector patches this wandb."""
    return version >= MIN_WANDB


def version_note(version: Tuple[int, ...]) -> str:
    """What a person should know about this version ("" when nothing)."""
    if not supported(version):
        return f"older than {dotted(MIN_WANDB)}: the injector leaves it alone"
    if version > _NEWEST_TESTED_WANDB:
        return f"newer than the newest version tested ({dotted(_NEWEST_TESTED_WANDB)}); " \
               "patch points are stable"
    return ""
