"""Freezing logged values: unit cases, and torch tensors through a real training subprocess."""

from __future__ import annotations

import math

import pytest

from primus_lens_inject.values import MAX_LIST, freeze, freeze_value


def test_plain_values_are_kept_and_non_finite_become_strings():
    row = {"a": 1.5, "b": 2, "c": True, "d": None, "e": "x", "n": math.nan, "i": math.inf,
           "m": -math.inf}
    assert freeze(row) == {"a": 1.5, "b": 2, "c": True, "d": None, "e": "x", "n": "NaN",
                           "i": "Infinity", "m": "-Infinity"}


def test_ints_too_long_to_print_become_descriptors():
    import json

    huge = 10 ** 5000  # wandb takes it; json.dumps refuses more than 4300 digits by default
    assert freeze({"h": huge, "k": -huge, "ok": 10 ** 400}) == {
        "h": {"_type": "int", "bits": 16610}, "k": {"_type": "int", "bits": 16610},
        "ok": 10 ** 400}
    assert freeze_value([huge]) == [{"_type": "int", "bits": 16610}]
    json.dumps(freeze({"h": huge, "nested": {"x": huge}}))  # encodes


def test_containers_are_bounded():
    assert freeze_value(list(range(MAX_LIST + 1))) == {"_type": "list", "length": MAX_LIST + 1}
    assert freeze_value((1, math.nan)) == [1, "NaN"]
    deep: dict = {}
    cursor = deep
    for _ in range(20):
        cursor["x"] = {}
        cursor = cursor["x"]
    frozen = freeze_value(deep)
    depth = 0
    while isinstance(frozen, dict) and "x" in frozen:
        frozen, depth = frozen["x"], depth + 1
    assert frozen == {"_type": "nested", "depth": 8} and depth == 8


def test_subclasses_and_enums_become_plain():
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class MyFloat(float):
        pass

    assert freeze({"l": Level.HIGH, "f": MyFloat("inf")}) == {"l": 3, "f": "Infinity"}
    assert type(freeze({"l": Level.HIGH})["l"]) is int


def test_torch_scalars_and_tensors(train):
    pytest.importorskip("torch")
    result = train("""
        import torch, wandb
        run = wandb.init(project="torch")
        loss = torch.tensor(0.5)
        run.log({"loss": loss, "vec": torch.ones(3), "one": torch.tensor([4]),
                 "grid": torch.arange(6).reshape(2, 3), "wide": torch.zeros(33),
                 "half": torch.tensor(1.5, dtype=torch.float16), "nan": torch.tensor(float("nan"))})
        loss.add_(1.0)                 # changed in place after logging: the record keeps 0.5
        run.finish()
    """)
    (line,) = result.record()
    data = line["data"]
    assert data["loss"] == 0.5 and data["one"] == 4 and data["half"] == 1.5
    assert data["nan"] == "NaN"
    # up to 32 elements wandb keeps a list (nested for a matrix), and so does the record
    assert data["vec"] == [1.0, 1.0, 1.0] and data["grid"] == [[0, 1, 2], [3, 4, 5]]
    assert data["wide"] == {"_type": "torch.Tensor", "shape": [33], "dtype": "torch.float32"}


