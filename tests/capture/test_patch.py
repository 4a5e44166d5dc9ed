"""Small pieces of the patcher that the subprocess tests cannot pin down exactly."""

from __future__ import annotations

import types

import pytest

from primus_lens_inject import compat
from primus_lens_inject.capture.patch import wandb_version
from primus_lens_inject.compat import MIN_WANDB


@pytest.mark.parametrize("text,expected", [
    ("0.12.21", (0, 12, 21)), ("0.31.0", (0, 31, 0)), ("0.31.0rc1", (0, 31, 0)),
    ("1.0.0.dev1", (1, 0, 0)), ("0.19", (0, 19)), ("garbage", ()),
])
def test_wandb_version_reads_release_numbers(text, expected):
    assert wandb_version(types.SimpleNamespace(__version__=text)) == expected


def test_version_gate():
    assert wandb_version(types.SimpleNamespace(__version__="0.12.20")) < MIN_WANDB
    assert wandb_version(types.SimpleNamespace(__version__="0.12.21rc1")) >= MIN_WANDB
    assert wandb_version(types.SimpleNamespace()) < MIN_WANDB


def test_version_facts_say_what_doctor_prints():
    """One set of facts for the patcher's gate and doctor's words (doctor parses a string)."""
    assert compat.parse_version("0.12.20") == (0, 12, 20)
    assert (compat.supported((0, 12, 20)), compat.supported((0, 12, 21))) == (False, True)
    assert compat.version_note((0, 12, 20)) == "older than 0.12.21: the injector leaves it alone"
    assert compat.version_note((0, 31, 0)) == ""
    assert compat.version_note((0, 32, 0)) == ("newer than the newest version tested (0.31.0); "
                                               "patch points are stable")
