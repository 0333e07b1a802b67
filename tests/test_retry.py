"""The transient retry policy: what it retries, how late, and the retry_after hint."""

from __future__ import annotations

import pytest

from tasker import RetryPolicy
from tasker._retry import retry_after


class Busy(Exception):
    """A 503 with a Retry-After header, as a scraper would raise it."""

    def __init__(self, retry_after: object = None) -> None:
        super().__init__("503")
        self.retry_after = retry_after


class TestWhatIsRetried:
    """retry_on takes exception classes or a predicate."""

    def test_classes(self) -> None:
        policy = RetryPolicy(retry_on=(Busy, TimeoutError))
        assert policy.retries(Busy()) and policy.retries(TimeoutError())
        assert not policy.retries(ValueError())

    def test_one_class_or_a_list(self) -> None:
        assert RetryPolicy(retry_on=Busy).retries(Busy())
        assert RetryPolicy(retry_on=[Busy]).retries(Busy())

    def test_predicate(self) -> None:
        policy = RetryPolicy(retry_on=lambda exc: "503" in str(exc))
        assert policy.retries(Busy()) and not policy.retries(ValueError("404"))

    @pytest.mark.parametrize("bad", [(), (int,), "Busy", 3])
    def test_bad_retry_on(self, bad: object) -> None:
        with pytest.raises(TypeError):
            RetryPolicy(retry_on=bad)

    @pytest.mark.parametrize(
        ("field", "value", "error"),
        [("attempts", -1, ValueError), ("attempts", 1.0, TypeError), ("base_delay", -0.1, ValueError),
         ("max_delay", float("inf"), ValueError), ("max_retry_after", "1", TypeError)],
    )
    def test_bad_numbers(self, field: str, value: object, error: type[Exception]) -> None:
        with pytest.raises(error):
            RetryPolicy(retry_on=(Busy,), **{field: value})  # type: ignore[arg-type]


class TestDelay:
    """Capped exponential backoff with full jitter, unless the error carries a hint."""

    def test_exponential_and_capped_without_jitter(self) -> None:
        policy = RetryPolicy(retry_on=(Busy,), base_delay=0.5, max_delay=3.0, jitter=False)
        assert [policy.delay(Busy(), n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
        assert policy.delay(Busy(), 10_000) == 3.0  # no overflow however many retries

    def test_full_jitter_scales_the_cap_by_the_random_draw(self) -> None:
        draws = iter([0.0, 0.5, 0.999])
        policy = RetryPolicy(retry_on=(Busy,), base_delay=1.0, max_delay=10.0, random=lambda: next(draws))
        assert policy.delay(Busy(), 0) == 0.0
        assert policy.delay(Busy(), 2) == 2.0
        assert policy.delay(Busy(), 5) == pytest.approx(9.99)

    def test_retry_after_wins_over_the_backoff(self) -> None:
        policy = RetryPolicy(retry_on=(Busy,), base_delay=100.0, max_retry_after=60.0)
        assert policy.delay(Busy(retry_after=7), 0) == 7.0
        assert policy.delay(Busy(retry_after=0), 3) == 0.0

    def test_retry_after_too_long_means_no_retry(self) -> None:
        policy = RetryPolicy(retry_on=(Busy,), max_retry_after=60.0)
        assert policy.delay(Busy(retry_after=61), 0) is None

    @pytest.mark.parametrize("hint", [None, "7", -1, float("nan"), True])
    def test_unusable_hints_are_ignored(self, hint: object) -> None:
        assert retry_after(Busy(retry_after=hint)) is None
        policy = RetryPolicy(retry_on=(Busy,), base_delay=1.0, jitter=False)
        assert policy.delay(Busy(retry_after=hint), 1) == 2.0
