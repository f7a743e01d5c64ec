"""Choices more than one command module takes, as ``Literal`` types: typer refuses any other value
with its own message listing them, and ``--help`` shows them."""

from __future__ import annotations

from typing import Literal

Weights = Literal["last", "best"]  # a run directory's checkpoint (runtime.rundir.resolve_checkpoint checks it too)
Split = Literal["test", "train", "val"]  # a split to score; val: the held-out share of train
