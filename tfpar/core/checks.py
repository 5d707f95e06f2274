"""Checks of user arguments that several modules share (pure Python).

Errors take tfpar's one form: what must hold, then `Received: name=value.`

Example:
    >>> whole_number("microbatches", 4)
    4
    >>> whole_number("microbatches", 0)
    Traceback (most recent call last):
    ...
    ValueError: microbatches must be a whole number >= 1. Received: microbatches=0.
"""

from __future__ import annotations

import numpy as np


def is_whole(value, minimum: int = 1) -> bool:
    """True for an int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def whole_number(name: str, value, *, minimum: int = 1, meaning: str = "") -> int:
    """Returns `value` if it is a whole number >= `minimum`.

    Args:
      name: the argument's name, as the user wrote it.
      value: what the user passed.
      minimum: the smallest valid value.
      meaning: an aside on what a value means, e.g. " (0 = one pack)".

    Raises:
      ValueError: `value` is not an int >= `minimum` (a bool is not one).
    """
    if not is_whole(value, minimum):
        raise ValueError(
            f"{name} must be a whole number >= {minimum}{meaning}. Received: {name}={value!r}."
        )
    return value


def boolean(name: str, value) -> bool:
    """Returns `value` if it is a bool (or numpy bool): a string such as
    "no" would otherwise read as True.

    Raises:
      ValueError: anything else.

    Example:
        >>> boolean("rematerialize", "no")
        Traceback (most recent call last):
        ...
        ValueError: rematerialize must be True or False. Received: rematerialize='no'.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}.")
    return bool(value)


def keras_arguments(name: str, method: str, kwargs: dict, allowed) -> None:
    """Raises TypeError naming any of `kwargs` that keras.Model.`method`
    (and so tfpar's `name`, its drop-in) does not take."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"{name} got unexpected argument(s) {unknown}. It takes "
            f"keras.Model.{method}'s arguments: {sorted(allowed)}, plus strategy=."
        )


def overridden(model, names) -> list[str]:
    """Which of the Keras `Model` methods `names` the model's class (or a
    base of it outside Keras, such as a keras_hub task) defines itself.

    Example:
        >>> class Mine(keras.Model):
        ...     def train_step(self, data):
        ...         return super().train_step(data)
        >>> overridden(Mine(), ["train_step", "test_step"])
        ['train_step']
    """
    def owner(name):
        return next(cls for cls in type(model).__mro__ if name in vars(cls))

    return [name for name in names if not owner(name).__module__.startswith("keras.")]
