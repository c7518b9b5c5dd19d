"""Synthetic session traces: a day-shaped arrival curve, sudden bursts, heavy-tailed lengths.

Why it exists: every policy in the comparison must see the very same sessions,
so a trace is generated once per seed and replayed against each of them.

- Arrivals: a non-homogeneous Poisson process whose rate follows a working day
  (quiet night, morning and afternoon peaks, an evening shoulder), drawn by
  thinning.
- Bursts: a few moments a day when many sessions start within a minute (a
  webinar, a shift change, an all-hands); one of them lands at night, when the
  pool is at its minimum. Burst sessions last longer (meetings).
- Lengths: lognormal (heavy right tail), capped at the pod's
  max_session_seconds (4 h), the longest a session may last anyway.
- Priorities: 10 % high, 80 % normal, 10 % low (the router's queue order).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

DAY = 86400.0


@dataclass(frozen=True)
class TraceConfig:
    """One day of traffic; every field has a default so a run is reproducible from its seed."""

    seconds: float = DAY
    """Length of the trace."""
    peak_arrivals_per_second: float = 1.5
    """Arrival rate at the busiest moment of the day curve (bursts come on top)."""
    night_share: float = 0.06
    """Night arrival rate as a share of the peak."""
    median_session_seconds: float = 90.0
    """Median session length (lognormal)."""
    session_sigma: float = 1.1
    """Lognormal sigma of session lengths: 1.1 gives p99 about 13x the median."""
    max_session_seconds: float = 4 * 3600.0
    """Cap on session length: the pod's max_session_seconds."""
    bursts: tuple[tuple[float, int], ...] = ((3.2, 60), (9.0, 120), (13.6, 150), (17.25, 100))
    """(hour of day, sessions) of each burst; they start within burst_spread_seconds."""
    burst_spread_seconds: float = 45.0
    """Burst sessions arrive uniformly over this long."""
    burst_median_session_seconds: float = 900.0
    """Median length of a burst session (a meeting)."""
    burst_session_sigma: float = 0.5
    """Lognormal sigma of burst session lengths."""
    priority_shares: tuple[float, float, float] = (0.1, 0.8, 0.1)
    """Shares of high, normal and low priority sessions."""


@dataclass
class Trace:
    """Sessions sorted by arrival: arrival time, length, priority (0 high .. 2 low)."""

    config: TraceConfig
    seed: int
    arrival: np.ndarray
    length: np.ndarray
    priority: np.ndarray
    burst: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.arrival)

    def summary(self) -> dict:
        return {"seed": self.seed, "sessions": int(len(self)), "burst_sessions": int(self.burst.sum()),
                "mean_session_seconds": round(float(self.length.mean()), 1),
                "p99_session_seconds": round(float(np.percentile(self.length, 99)), 1),
                "max_session_seconds": round(float(self.length.max()), 1),
                "config": {k: v for k, v in asdict(self.config).items()}}


def day_shape(hours: np.ndarray | float, night_share: float) -> np.ndarray:
    """Arrival rate as a share of the peak over the hours of a day (max 1)."""
    h = np.asarray(hours, dtype=float) % 24.0
    bumps = (0.80 * np.exp(-0.5 * ((h - 10.5) / 1.8) ** 2)
             + 1.00 * np.exp(-0.5 * ((h - 15.0) / 2.0) ** 2)
             + 0.35 * np.exp(-0.5 * ((h - 20.5) / 1.3) ** 2))
    peak = 1.0 + 0.80 * math.exp(-0.5 * (4.5 / 1.8) ** 2) + 0.35 * math.exp(-0.5 * (5.5 / 1.3) ** 2)
    return night_share + (1.0 - night_share) * np.minimum(1.0, bumps / peak)


def make_trace(config: TraceConfig = TraceConfig(), seed: int = 1) -> Trace:
    rng = np.random.default_rng(seed)
    lam_max = config.peak_arrivals_per_second
    n = int(lam_max * config.seconds * 1.2) + 1000
    candidates = np.cumsum(rng.exponential(1.0 / lam_max, n))
    candidates = candidates[candidates < config.seconds]
    keep = rng.random(len(candidates)) < day_shape(candidates / 3600.0, config.night_share)
    base = candidates[keep]
    base_len = rng.lognormal(math.log(config.median_session_seconds), config.session_sigma, len(base))

    b_arr, b_len = [], []
    for hour, count in config.bursts:
        t0 = hour * 3600.0
        if t0 >= config.seconds:
            continue
        b_arr.append(t0 + rng.random(count) * config.burst_spread_seconds)
        b_len.append(rng.lognormal(math.log(config.burst_median_session_seconds), config.burst_session_sigma, count))
    arrival = np.concatenate([base, *b_arr])
    length = np.concatenate([base_len, *b_len])
    burst = np.concatenate([np.zeros(len(base), bool), *[np.ones(len(a), bool) for a in b_arr]])
    length = np.clip(length, 1.0, config.max_session_seconds)
    priority = rng.choice(3, size=len(arrival), p=config.priority_shares)
    order = np.argsort(arrival, kind="stable")
    return Trace(config, seed, arrival[order], length[order], priority[order].astype(np.int8), burst[order])


def concurrency_peak(trace: Trace) -> int:
    """Most sessions open at once with unlimited capacity (what static provisioning must hold)."""
    events = np.concatenate([np.stack([trace.arrival, np.ones(len(trace))], 1),
                             np.stack([trace.arrival + trace.length, -np.ones(len(trace))], 1)])
    order = np.lexsort((events[:, 1], events[:, 0]))  # ends before starts at the same instant
    return int(np.cumsum(events[order, 1]).max())
