"""Fast scalar draws for the world's samplers: uniforms fetched from a numpy Generator in blocks.

Building a world makes ~30 scalar draws per pair. A scalar `rng.random()` costs ~1 us and
`rng.integers(n)` ~3 us (measured on the 2-core dev box); popping from a block of
`rng.random(128)` costs ~0.1 us. Draws stay a pure function of the Generator's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

__all__ = ["Uniforms"]

T = TypeVar("T")


class Uniforms:
    """Uniform [0, 1) floats from `rng`, fetched `block` at a time. Leftovers are dropped with
    the object, so a caller's Generator advances by whole blocks."""

    def __init__(self, rng: np.random.Generator, block: int = 128):
        self.rng = rng
        self._block = block
        self._buffer: list[float] = []

    def random(self) -> float:
        if not self._buffer:
            self._buffer = self.rng.random(self._block).tolist()[::-1]
        return self._buffer.pop()

    def index(self, n: int) -> int:
        """Uniform integer in [0, n), n >= 1."""
        if not self._buffer:
            self._buffer = self.rng.random(self._block).tolist()[::-1]
        return min(int(self._buffer.pop() * n), n - 1)

    def choice(self, options: Sequence[T]) -> T:
        """A uniform element of a non-empty sequence."""
        return options[self.index(len(options))]

    def categorical(self, cdf: Sequence[float]) -> int:
        """Index i with probability cdf[i] - cdf[i-1]; `cdf` lists the cumulative probabilities
        of all outcomes but the last (e.g. (0.3, 0.75) for probabilities 0.3, 0.45, 0.25)."""
        x = self.random()
        return sum(x >= edge for edge in cdf)
