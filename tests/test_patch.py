"""Small pieces of the patcher that the subprocess tests cannot pin down exactly."""

from __future__ import annotations

import types

import pytest

from primus_lens_inject.patch import MIN_WANDB, wandb_version


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
