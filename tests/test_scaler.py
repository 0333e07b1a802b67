"""The scaler actor on virtual time: burst workers come under backlog and go when idle.

Load is driven with :class:`helpers.Gate` tasks, so the backlog at each tick is exact, and
time with ``FakeClock.advance(0.1)``: one call, one scaler tick.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import attrs
import gevent
import pytest
from gevent.event import Event
from helpers import BrokenCollector, Gate, Manager, RecordingLogger, Resources, SlowClose, Unhealthy, check_health

import tasker
from tasker import TaskManager, TaskMetrics
from tasker.testing import FakeClock

INTERVAL = 0.1  # seconds: burst_interval in every test here


class Load:
    """Gate tasks on one manager: submit them, release them, and stop cleanly at the end."""

    def __init__(self, manager: TaskManager[int, Any], count: int = 0) -> None:
        self.manager = manager
        self.gates: list[Gate] = []
        self.replies: list[Any] = []
        self.add(count)

    def add(self, count: int) -> None:
        for _ in range(count):
            gate = Gate()
            self.gates.append(gate)
            self.replies.append(self.manager.submit(gate))

    def running(self) -> list[Gate]:
        return [g for g in self.gates if g.started.is_set() and not g.release.is_set()]

    def finish(self, count: int | None = None) -> None:
        """Release the ``count`` oldest running gates (all gates if None) and wait for their replies."""
        if count is None:
            chosen = [g for g in self.gates if not g.release.is_set()]
        else:
            chosen = self.running()[:count]
        for gate in chosen:
            gate.release.set()
        for gate, reply in zip(self.gates, self.replies, strict=True):
            if gate in chosen:
                assert reply.get() == "gate"
        gevent.idle()

    def outstanding(self) -> int:
        return sum(1 for g in self.gates if not g.release.is_set())

    def stop(self) -> None:
        self.finish()
        assert self.manager.stop() is True


@pytest.fixture
def clock() -> FakeClock:
    """The test's virtual clock: ``tick`` moves it one scaler interval."""
    return FakeClock()


@pytest.fixture
def resources() -> Resources:
    """The test's counting on_create/on_destroy."""
    return Resources()


def start(resources: Resources, clock: FakeClock, **kwargs: Any) -> TaskManager[int, Any]:
    """A manager on ``clock`` with no run_task pool, its scaler parked on its first tick."""
    kwargs.setdefault("burst_interval", INTERVAL)
    kwargs.setdefault("resource_pool_size", 0)
    kwargs.setdefault("logger", RecordingLogger())
    manager: Manager = TaskManager(resources.config(clock=clock, **kwargs))
    gevent.idle()  # base workers park, the scaler sleeps until t = 0.1
    return manager


def tick(clock: FakeClock, count: int = 1) -> None:
    for _ in range(count):
        clock.advance(INTERVAL)


def burst(manager: TaskManager[int, Any]) -> int:
    return manager.stats().burst_workers


class TestNoScaler:
    """With max_worker_count equal to worker_count there is no scaler at all."""

    def test_no_scaler_greenlet_and_no_bursting(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=2)
        assert manager._scaler is None
        assert clock.sleepers == 0  # nobody sleeps on the clock
        load = Load(manager, 10)
        tick(clock, 20)
        assert burst(manager) == 0
        assert resources.calls == 2
        load.stop()


class TestScaleUp:
    """A backlog with no idle worker brings burst workers at the next tick, half the room per tick."""

    @pytest.mark.parametrize(("base", "ceiling"), [(2, 6), (1, 4), (3, 4), (2, 12), (4, 5)])
    def test_sustained_step_reaches_the_ceiling_within_two_ticks(
        self, base: int, ceiling: int, clock: FakeClock, resources: Resources
    ) -> None:
        manager = start(resources, clock, worker_count=base, max_worker_count=ceiling)
        load = Load(manager, 3 * ceiling)
        gevent.idle()
        assert burst(manager) == 0  # nothing before the tick
        step = math.ceil((ceiling - base) / 2)
        counts = []
        for _ in range(4):
            tick(clock)
            counts.append(burst(manager))
        room = ceiling - base
        assert counts == [min(step, room), room, room, room]
        stats = manager.stats()
        assert stats.active_workers == ceiling
        assert stats.queued_tasks == 3 * ceiling - ceiling
        assert resources.calls == ceiling
        load.stop()
        resources.assert_all_destroyed_once()

    def test_no_burst_worker_for_messages_waiting_for_the_global_token(
        self, clock: FakeClock, resources: Resources
    ) -> None:
        """Regression: the backlog counted messages the global rate held back; the burst
        workers started for them parked, retired and were started again, over and over."""
        manager = start(resources, clock, worker_count=1, max_worker_count=4, rate_limit=tasker.RateLimit(0.05))
        load = Load(manager, 1)  # takes the one token, and the base worker
        quick = [manager.submit(lambda ctx, r: "quick") for _ in range(5)]
        tick(clock, 150)  # 15 s, and no token yet
        assert resources.calls == 1 and burst(manager) == 0
        tick(clock, 51)  # a token at 20 s: one worker can use it
        assert resources.calls == 2 and quick[0].get() == "quick"
        assert not any(r.ready() for r in quick[1:])
        load.finish()
        manager.kill()

    def test_never_more_burst_workers_than_the_backlog(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=10)  # step 4
        load = Load(manager, 3)  # two run, one waits
        tick(clock)
        assert burst(manager) == 1
        assert manager.stats().queued_tasks == 0
        tick(clock, 5)
        assert burst(manager) == 1
        assert resources.calls == 3
        load.stop()

    def test_burst_workers_take_the_backlog_in_order(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=1, max_worker_count=3)
        load = Load(manager, 4)
        tick(clock)
        assert [g.started.is_set() for g in load.gates] == [True, True, False, False]
        tick(clock)
        assert [g.started.is_set() for g in load.gates] == [True, True, True, False]
        load.stop()


class TestDrainingBacklog:
    """A backlog that the current workers clear within one interval brings no burst worker."""

    @pytest.mark.parametrize(
        ("finished", "waiting", "burst_after"),
        [
            # 5 done and nothing new in this interval; 1 still waits: no new burst worker.
            pytest.param(5, 1, 3, id="no_burst_when_completions_outpace_the_backlog"),
            # 1 done and nothing new; 5 still wait: three more burst workers.
            pytest.param(1, 5, 6, id="burst_when_the_backlog_outgrows_the_completions"),
        ],
    )
    def test_completions_against_the_backlog(
        self, finished: int, waiting: int, burst_after: int, clock: FakeClock, resources: Resources
    ) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=8)  # step 3
        load = Load(manager, 11)
        tick(clock)
        assert burst(manager) == 3  # 5 running, 6 waiting
        load.finish(finished)
        assert manager.stats().queued_tasks == waiting
        tick(clock)
        assert burst(manager) == burst_after
        load.stop()


class TestNoBurstWhileIdle:
    """No burst worker starts while a worker is idle, or while the queue empties between ticks."""

    def test_no_bursting_with_an_idle_worker(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=4, max_worker_count=8)
        load = Load(manager, 3)
        tick(clock, 20)
        stats = manager.stats()
        assert (stats.burst_workers, stats.busy_workers, stats.queued_tasks) == (0, 3, 0)
        assert resources.calls == 4
        load.stop()

    def test_no_bursting_for_fast_tasks_between_ticks(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=8)
        for _ in range(20):
            replies = [manager.submit(lambda ctx, r: r) for _ in range(50)]  # a backlog of 48, briefly
            gevent.joinall(replies, raise_error=True)
            tick(clock)
        assert burst(manager) == 0
        assert resources.calls == 2
        assert manager.stop() is True


class TestScaleDown:
    """Burst workers idle for burst_linger retire, and their resources are destroyed exactly once."""

    @pytest.mark.parametrize("end", ["stop", "kill"])
    def test_shutdown_from_the_scalers_logger_as_a_burst_worker_retires(self, clock: FakeClock, end: str) -> None:
        """stop() works from the scaler's logger (shutdown does not wait for the scaler), and
        kill() there leaves alone the on_destroy the retirement took the burst worker into.
        Regression: kill()'s GreenletExit, scheduled after the retirement, landed in it."""
        resources = SlowClose()
        ended: list[bool | None] = []
        manager: TaskManager[int, Any]

        class Ending(RecordingLogger):
            def debug(self, msg: str, *args: Any) -> None:
                super().debug(msg, *args)
                if "retired" in msg:
                    ended.append(getattr(manager, end)())

        manager = start(resources, clock, worker_count=1, max_worker_count=2, burst_linger=0.2, logger=Ending())
        load = Load(manager, 2)
        tick(clock)
        assert burst(manager) == 1
        load.finish()
        tick(clock, 4)
        assert ended == [True if end == "stop" else None]
        assert manager._shutdown.finished.is_set()
        assert resources.interrupted == []
        resources.assert_all_destroyed_once()

    @pytest.mark.parametrize("linger", [None, 0.5, 2.0])
    def test_idle_burst_workers_retire_after_the_linger(
        self, linger: float | None, clock: FakeClock, resources: Resources
    ) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=6, burst_linger=linger)
        load = Load(manager, 12)
        tick(clock, 2)
        assert burst(manager) == 4
        tick(clock, 20)  # busy burst workers never retire, however long the load lasts
        assert burst(manager) == 4
        load.finish()  # the load ends now
        ticks_of_linger = round((linger if linger is not None else 10 * INTERVAL) / INTERVAL)
        history = []
        for _ in range(ticks_of_linger + 3):
            tick(clock)
            history.append(burst(manager))
        assert history[: ticks_of_linger - 1] == [4] * (ticks_of_linger - 1)  # not before the linger
        assert history[-1] == 0  # at most 3 intervals late
        assert sorted(set(history), reverse=True) == [4, 0]  # all at once: they idled together
        burst_resources = [3, 4, 5, 6]
        assert Counter(resources.destroyed) == Counter(burst_resources)
        stats = manager.stats()
        assert (stats.base_workers, stats.burst_workers) == (2, 0)
        tick(clock, 30)  # base workers never retire
        assert manager.stats().base_workers == 2
        assert Counter(resources.destroyed) == Counter(burst_resources)
        assert manager.stop() is True
        resources.assert_all_destroyed_once()

    @pytest.mark.parametrize("per_tick", [1, 2, 3])
    def test_after_a_spike_only_the_needed_workers_stay(
        self, per_tick: int, clock: FakeClock, resources: Resources
    ) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=6)
        load = Load(manager, 12)  # a spike: all six workers busy
        tick(clock, 2)
        assert burst(manager) == 4
        load.finish()
        for _ in range(30):  # then a light load, three times longer than the linger
            load.add(per_tick)
            tick(clock)
            load.finish(per_tick)
        # per_tick tasks at a time need per_tick workers: the base ones, plus bursts beyond them.
        remaining = burst(manager)
        load.stop()
        assert remaining == max(0, per_tick - 2)


class TestNoOscillation:
    """Under a steady load the worker count settles and then never changes."""

    @pytest.mark.parametrize(("outstanding", "per_tick"), [(3, 1), (5, 2), (5, 5), (8, 3)])
    def test_steady_load_settles(self, outstanding: int, per_tick: int, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=6)
        load = Load(manager)

        def one_tick() -> None:
            load.add(outstanding - load.outstanding())
            tick(clock)
            load.finish(per_tick)

        for _ in range(30):  # warm-up, longer than the linger (1 s)
            one_tick()
        settled = (resources.calls, len(resources.destroyed), burst(manager))
        assert manager.stats().base_workers + burst(manager) == min(6, outstanding)
        for _ in range(60):
            one_tick()
            assert (resources.calls, len(resources.destroyed), burst(manager)) == settled
        load.stop()
        resources.assert_all_destroyed_once()

    def test_on_off_load_shorter_than_the_linger_causes_no_churn(self, clock: FakeClock, resources: Resources) -> None:
        manager = start(resources, clock, worker_count=2, max_worker_count=4)  # linger 1.0 s
        load = Load(manager)
        for cycle in range(12):
            load.add(8)  # on: every worker busy, four waiting
            tick(clock, 3)
            assert burst(manager) == 2
            load.finish()
            for _ in range(7):  # off for 0.7 s < linger
                tick(clock)
                assert burst(manager) == 2, f"a burst worker retired in off-period {cycle}"
        assert resources.calls == 4
        assert resources.destroyed == []
        tick(clock, 13)  # an off-period longer than the linger does retire them
        assert burst(manager) == 0
        assert sorted(resources.destroyed) == [3, 4]
        assert manager.stop() is True


class TestBackoffBlocksScaling:
    """While the supervisor's on_create backoff runs, the scaler starts no worker."""

    def test_no_burst_worker_during_the_backoff(self) -> None:
        clock = FakeClock()
        resources = Resources(fail_on=set(range(3, 8)))  # calls 3..7 fail
        manager = start(resources, clock, worker_count=2, max_worker_count=6, max_retries=0)
        load = Load(manager, 1)  # keeps one base worker busy: the queue is not failed for want of workers

        def bad(ctx: tasker.Context, resource: int) -> None:
            raise Unhealthy("the resource went bad")

        with pytest.raises(Unhealthy):
            manager.queue_task(bad)
        gevent.idle()
        assert resources.calls == 3  # its replacement failed at t=0
        load.add(10)
        assert manager.stats().queued_tasks == 10
        # Base restarts at 0.05, 0.15, 0.35, 0.75 fail; 1.55 works. Ticks come every 0.1 s.
        restarts = [0.05, 0.15, 0.35, 0.75, 1.55]
        for n in range(1, 16):  # ticks at 0.1 ... 1.5
            tick(clock)
            assert burst(manager) == 0, f"a burst worker started during the backoff at tick {n}"
            assert resources.calls == 3 + sum(1 for t in restarts if t < clock.now())
        tick(clock)  # 1.6: the base worker is back (call 8), and scaling resumes
        assert manager.stats().base_workers == 2
        assert burst(manager) == 2
        tick(clock)
        assert burst(manager) == 4
        load.stop()
        resources.assert_all_destroyed_once()


class TestCeiling:
    """Base and burst workers together never exceed max_worker_count."""

    def test_a_pending_base_restart_is_not_room_for_bursts(self, clock: FakeClock, resources: Resources) -> None:
        calls = 0
        slow_connect = Event()

        def create() -> int:
            nonlocal calls
            calls += 1
            call = calls
            if call == 5:
                slow_connect.wait()  # a slow connect that works in the end
            if call in (4, 6, 7, 8):
                raise ConnectionError(f"on_create call {call} fails")
            return resources.create()

        config = tasker.Config(
            on_create=create,
            on_destroy=resources.destroy,
            worker_count=3,
            max_worker_count=4,
            resource_pool_size=0,
            max_retries=0,
            check_health=check_health,
            burst_interval=INTERVAL,
            clock=clock,
            logger=RecordingLogger(),
        )
        manager: Manager = TaskManager(config)
        gevent.idle()
        load = Load(manager, 1)  # one base worker stays busy
        go_bad = Event()

        def goes_bad(ctx: tasker.Context, resource: int) -> None:
            go_bad.wait()
            raise Unhealthy("the resource went bad")

        bad = [manager.submit(goes_bad) for _ in range(2)]
        gevent.idle()
        load.add(10)
        go_bad.set()  # two workers retire; replacement calls 4 (fails) and 5 (slow) start
        gevent.joinall(bad)
        gevent.idle()
        # Calls 6, 7, 8 fail at 0.05, 0.15, 0.35; the next base restart waits until 0.75.
        tick(clock, 4)
        slow_connect.set()  # call 5 works at 0.4: the streak is over, one base worker still missing
        gevent.idle()
        peak = 0
        for _ in range(6):
            tick(clock)
            stats = manager.stats()
            peak = max(peak, stats.base_workers + stats.burst_workers)
        final = manager.stats()
        load.stop()
        assert final.base_workers == 3
        assert peak <= 4, f"{peak} workers with max_worker_count=4"


class LyingCollector:
    """A collector that ignores events and reports a flood of arrivals and no completions."""

    def __init__(self) -> None:
        self.metrics_calls = 0

    def record_arrival(self) -> None:
        pass

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        pass

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        pass

    def record_retry(self) -> None:
        pass

    def metrics(self) -> TaskMetrics:
        self.metrics_calls += 1
        return TaskMetrics(task_arrival_rate=1e9, task_completion_rate=0.0, average_execution_time=1e9)


class TestScalerIgnoresTheCollector:
    """The scaler reads the manager's own counters, never the user's collector."""

    def test_bursting_works_with_a_broken_collector(self, clock: FakeClock, resources: Resources) -> None:
        collector = BrokenCollector()
        logger = RecordingLogger()
        manager = start(resources, clock, worker_count=2, max_worker_count=6, collector=collector, logger=logger)
        load = Load(manager, 12)
        tick(clock)
        assert burst(manager) == 2
        tick(clock)
        assert burst(manager) == 4
        load.finish()
        tick(clock, 13)
        assert burst(manager) == 0
        assert collector.metrics_calls == 0
        assert any("record_arrival" in msg for level, msg in logger.records if level == "error")
        assert manager.stop() is True
        resources.assert_all_destroyed_once()

    def test_a_lying_collector_does_not_cause_bursting(self, clock: FakeClock, resources: Resources) -> None:
        collector = LyingCollector()
        manager = start(resources, clock, worker_count=2, max_worker_count=6, collector=collector)
        load = Load(manager, 1)
        tick(clock, 20)
        assert burst(manager) == 0
        assert resources.calls == 2
        assert collector.metrics_calls == 0
        load.stop()


class TestCooldown:
    """No new scaling step while the last step's workers are still creating their resource."""

    def test_slow_on_create_does_not_overshoot(self, clock: FakeClock, resources: Resources) -> None:
        opened = Event()  # on_create of burst workers blocks until this is set
        make = resources.create

        def slow_create() -> int:
            if resources.calls >= 2:  # the two base workers are made at once
                opened.wait()
            return make()

        config = resources.config(
            worker_count=2, max_worker_count=12, clock=clock, burst_interval=INTERVAL, resource_pool_size=0
        )
        manager: Manager = TaskManager(attrs.evolve(config, on_create=slow_create))
        gevent.idle()
        load = Load(manager, 2 + 4)  # two run, four wait: the first step starts four workers (step 5)
        tick(clock)
        assert manager._supervisor.starting == 4
        tick(clock, 3)  # the backlog is still there, but four workers are on their way
        assert manager._supervisor.starting == 4
        assert len(manager._supervisor.workers) == 6
        opened.set()
        gevent.idle()
        assert manager._supervisor.starting == 0
        assert burst(manager) == 4
        assert manager.stats().queued_tasks == 0
        load.stop()
        resources.assert_all_destroyed_once()

    def test_a_worker_that_fails_to_start_frees_its_place(self) -> None:
        clock = FakeClock()
        resources = Resources(fail_on={3})  # the first burst worker's on_create fails
        manager = start(resources, clock, worker_count=2, max_worker_count=4)
        load = Load(manager, 3)
        tick(clock)
        gevent.idle()
        assert manager._supervisor.starting == 0
        assert burst(manager) == 0
        tick(clock, 3)  # past the 0.05 s backoff: the scaler tries again
        assert burst(manager) == 1
        load.stop()
        resources.assert_all_destroyed_once()
