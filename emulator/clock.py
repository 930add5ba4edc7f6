"""The emulator's clock and id source: advanceable time, optionally seeded ids."""

from __future__ import annotations

import random
import time
import uuid


class Clock:
    """Wall time plus an offset that tests move forward with `advance()`.

    Token expiry, secret expiry and every rate window read this clock, never `time.time()`.
    """

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> float:
        """Current emulator time as epoch seconds."""
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> float:
        """Move the clock forward (never backward) and return the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset_s += seconds
        return self.now()

    def reset(self) -> None:
        """Return to wall time."""
        self.offset_s = 0.0


class Ids:
    """UUID source; with a seed the sequence of ids is the same on every run."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed) if seed is not None else None
        self.seed = seed

    def new(self) -> str:
        """A fresh UUID4 string."""
        if self._rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def random(self) -> float:
        """A float in [0, 1) from the same (seeded) source, for fault probabilities."""
        return self._rng.random() if self._rng is not None else random.random()

    def reset(self) -> None:
        """Restart the seeded sequence."""
        if self.seed is not None:
            self._rng = random.Random(self.seed)
