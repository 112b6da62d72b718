"""A CostMeter for the budget tests whose limit is fixed from what was measured when tuning's budget
guard first prices a trial, so the guard's path is certain whatever the machine's speed."""

from __future__ import annotations

import threading

from ensemble.cost import CostMeter


class LimitAtFirstPricing(CostMeter):
    """A :class:`CostMeter` whose limit is set the first time :meth:`would_exceed` is asked.

    The tuning budget guard asks ``would_exceed(running + one more trial + the refit)`` before each
    trial once a trial has finished. On that first question the limit becomes what was billed so far
    (the stages before tuning, Tune's start-up and the first trial: measured, not guessed) + the
    amount asked about x ``ROOM_FACTOR``: the guard is certain to have room for at least one more
    trial, and certain to run out of it after a few dozen at most. Until then the limit given to the constructor holds: set it
    high, so that Tune's ``time_budget_s`` backstop (derived from it at the start) cannot end the
    search first. ``priced_at`` is the bill when the limit was set (None: nobody ever asked, i.e. the
    guard never priced a trial)."""

    ROOM_FACTOR = 1.5

    def __init__(self, cpu_hour_usd: float, gpu_hour_usd: float, limit_usd: float) -> None:
        super().__init__(cpu_hour_usd, gpu_hour_usd, limit_usd)
        self.priced_at: float | None = None
        self.first_ask_usd: float | None = None
        self._first = threading.Lock()

    def would_exceed(self, extra_usd: float) -> bool:
        with self._first:
            if self.priced_at is None:
                self.priced_at = self.spent_usd
                self.first_ask_usd = float(extra_usd)
                self.limit_usd = self.priced_at + self.ROOM_FACTOR * self.first_ask_usd
        return super().would_exceed(extra_usd)
