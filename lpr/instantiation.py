"""What a Hydra ``_target_`` raised, from under the ``InstantiationException``s that wrap it."""

from __future__ import annotations

from hydra.errors import InstantiationException


def target_error(e: InstantiationException) -> BaseException:
    """What a ``_target_`` raised under Hydra's wrapping (nested once per level): a ``ValueError``
    or ``TypeError`` where it refused its values (a value out of range, a key it does not take),
    an ``ImportError`` where the target itself could not be found."""
    cause: BaseException = e
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause
