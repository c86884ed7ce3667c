"""The size of a network before it is built: parameters counted without allocating, and a build refused when it
would pass ``limits().max_parameters`` (floor 1).

Counting on the meta device allocates nothing, but its first use imports a second or more of torch internals; so
``build_within_limit`` first builds for real while the tensors made stay small and few, and counts on the meta device
only a network that grows past that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..limits import limits

__all__ = ["count_parameters", "affine_parameters", "check_parameters", "build_within_limit"]

# a network whose tensors hold fewer elements than this is built at once (256 MB of float32, six times the
# 'large' preset); a larger one is counted on the meta device before anything more is allocated
_FAST_BUILD_ELEMENTS = 2**26
# ... and one that makes more tensors than this (a very deep one: ten thousand blocks of small tensors) is counted
# too, so that refusing it takes a second, not the minute its build would
_FAST_BUILD_TENSORS = 4096
_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.arange})


def count_parameters(build: Callable[[], nn.Module]) -> int | None:
    """The parameters of the module ``build()`` makes, built on the meta device (nothing is allocated); None when
    there are too many to count (a size or a tensor's bytes overflow 64 bits)."""
    try:
        with torch.device("meta"):
            module = build()
    except OverflowError:
        return None
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        return None
    return sum(p.numel() for p in module.parameters())


def affine_parameters(build_with: Callable[[int], nn.Module], n: int) -> int | None:
    """``count_parameters`` of ``build_with(n)``, for a count affine in ``n`` (blocks per level, layers): counted
    from ``n`` = 1 and 2, so the time to count does not grow with ``n``."""
    if n <= 2:
        return count_parameters(lambda: build_with(n))
    one, two = count_parameters(lambda: build_with(1)), count_parameters(lambda: build_with(2))
    return None if one is None or two is None else one + (n - 1) * (two - one)


def check_parameters(what: str, count: int | None) -> None:
    """One clear error when ``count`` parameters of ``what`` (None: too many to count) pass the limit."""
    current = limits()
    most = current.max_parameters
    if count is None or count > most:
        counted = "too many parameters to count" if count is None else f"{count:,} parameters"
        raise ValueError(
            f"{what} has {counted}, more than the limit of {most:,}; set {current.env_name('max_parameters')} "
            "to raise it."
        )


def build_within_limit(build: Callable[[], nn.Module], count: Callable[[], int | None], what: str) -> nn.Module:
    """``build()``; refused with one clear error naming ``what``, before its large tensors are allocated, when it
    would hold more than ``limits().max_parameters`` parameters (``count()`` counts them without allocating)."""
    try:
        with _ElementBudget(min(_FAST_BUILD_ELEMENTS, limits().max_parameters), _FAST_BUILD_TENSORS):
            return build()
    except _OverBudget:
        check_parameters(what, count())
    return build()  # within the limit, though larger than the fast path builds at once


class _OverBudget(Exception):
    """A build made, or was about to make, more tensor elements than its budget."""


class _ElementBudget(TorchFunctionMode):
    """Counts the elements and the tensors factory functions make, and stops a build before either passes its
    budget."""

    def __init__(self, budget: int, tensors: int) -> None:
        super().__init__()
        self.left, self.tensors_left = budget, tensors

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES:
            self.left -= _elements(func, args, kwargs)
            self.tensors_left -= 1
            if self.left < 0 or self.tensors_left < 0:
                raise _OverBudget
        return func(*args, **kwargs)


def _elements(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The elements of the tensor a factory call ``func(*args, **kwargs)`` makes."""
    if func is torch.arange:
        given = dict(zip(("start", "end", "step"), args if len(args) > 1 else (0, *args), strict=False))
        bounds = {"start": 0, "step": 1, **given, **kwargs}
        return max(0, math.ceil((float(bounds["end"]) - float(bounds["start"])) / float(bounds["step"])))
    size = kwargs.get("size", args[0] if len(args) == 1 or func is torch.full else args)
    dims = (size,) if isinstance(size, int) else size
    return math.prod(int(d) for d in dims)
