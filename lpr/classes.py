"""Class lists that must agree: the one rule shared by the model, the callbacks and the CLIs."""

from __future__ import annotations

from collections.abc import Sequence


class ConsistencyError(ValueError):
    """Two parts of a run disagree (head size vs classes, backbone vs config, data vs checkpoint)."""


def check_classes(expected: Sequence[str], found: Sequence[str], *, expected_from: str, found_from: str) -> None:
    if list(expected) != list(found):
        only_a = [c for c in expected if c not in found]
        only_b = [c for c in found if c not in expected]
        raise ConsistencyError(
            f"class lists differ: {expected_from} has {list(expected)}, {found_from} has {list(found)} "
            f"(only in the first: {only_a}; only in the second: {only_b}). To train a checkpoint on a new "
            "class list, start a new run with init_from=CKPT."
        )
