"""The soak's load choice: a paced schedule is sustained when its lag stays bounded (reliability.load.lag_bounded)."""

from __future__ import annotations

from reliability.load import LAG_LIMIT_S, OK, Record, Run, lag_bounded


def run_with(lags: list[float], seconds: float = 30.0, unsent: int = 0) -> Run:
    step = seconds / len(lags)
    records = [Record(i * step, 0.01, "nhits", "grpc", OK, lag=lag) for i, lag in enumerate(lags)]
    return Run(records, unsent, seconds=seconds)


def test_a_steady_small_lag_is_bounded():
    ok, lag = lag_bounded(run_with([0.02, 0.3, 0.01] * 100), 30.0)
    assert ok and lag["unsent"] == 0


def test_a_lag_that_grows_through_the_run_is_past_capacity():
    """10 % over capacity for 30 s: the schedule falls behind linearly, about 3 s by the end."""
    ok, lag = lag_bounded(run_with([0.01 * i for i in range(300)]), 30.0)
    assert not ok and lag["p99_lag_last_third_ms"] > LAG_LIMIT_S * 1e3


def test_a_slow_but_steady_growth_under_the_limit_still_fails_and_so_does_a_backlog_past_the_limit():
    growing = [0.0] * 100 + [0.1] * 100 + [0.3] * 100  # under the 1 s limit, but 0.3 s more at the end
    assert not lag_bounded(run_with(growing), 30.0)[0]
    assert lag_bounded(run_with([0.01] * 300, unsent=3), 30.0)[0]  # due in the last moments: a bounded lag's backlog
    assert not lag_bounded(run_with([0.01] * 300, unsent=50), 30.0)[0]  # 5 s of the schedule never sent


def test_a_single_stall_longer_than_the_limit_in_a_steady_run_is_not_falling_behind():
    """A 600 s run at a sustained rate sees single 1 s stalls (soak run 8): the tail, not the load."""
    ok, lag = lag_bounded(run_with([0.02] * 299 + [1.2]), 30.0)
    assert ok and lag["max_lag_last_third_ms"] == 1200.0
