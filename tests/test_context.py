"""``tasker.Context``: cooperative cancellation through a tree of contexts."""

from __future__ import annotations

import gevent
import pytest

import tasker


class TestRoot:
    """A root context is live until cancelled, and cancel is idempotent."""

    def test_new_root_is_live(self) -> None:
        ctx = tasker.Context()
        assert ctx.cancelled is False
        ctx.check()  # does not raise

    def test_cancel(self) -> None:
        ctx = tasker.Context()
        ctx.cancel()
        assert ctx.cancelled is True

    def test_check_raises_cancelled_error(self) -> None:
        ctx = tasker.Context()
        ctx.cancel()
        with pytest.raises(tasker.CancelledError):
            ctx.check()

    def test_cancel_is_idempotent(self) -> None:
        ctx = tasker.Context()
        child = ctx.child()
        ctx.cancel()
        ctx.cancel()
        child.cancel()
        child.cancel()
        assert ctx.cancelled and child.cancelled
        assert ctx.wait(0) is True

    def test_repr_shows_state(self) -> None:
        ctx = tasker.Context()
        assert "live" in repr(ctx)
        ctx.cancel()
        assert "cancelled" in repr(ctx)


class TestTree:
    """Cancellation flows down to every descendant, never up or sideways."""

    @pytest.mark.parametrize(
        ("cancel", "cancelled"),
        [
            pytest.param("root", {"root", "child", "grandchild"}, id="reaches_grandchild"),
            pytest.param("grandchild", {"grandchild"}, id="does_not_reach_parent"),
            pytest.param("child", {"child", "grandchild"}, id="middle"),
        ],
    )
    def test_cancel(self, cancel: str, cancelled: set[str]) -> None:
        root = tasker.Context()
        child = root.child()
        grandchild = child.child()
        tree = {"root": root, "child": child, "grandchild": grandchild}
        tree[cancel].cancel()
        assert {name for name, ctx in tree.items() if ctx.cancelled} == cancelled
        for name in cancelled:
            with pytest.raises(tasker.CancelledError):
                tree[name].check()

    def test_cancel_does_not_reach_sibling(self) -> None:
        root = tasker.Context()
        first, second = root.child(), root.child()
        first.cancel()
        assert not second.cancelled
        assert not root.cancelled

    def test_child_of_cancelled_is_cancelled(self) -> None:
        root = tasker.Context()
        root.cancel()
        assert root.child().cancelled
        assert root.child(timeout=100).cancelled

    def test_child_is_a_new_context(self) -> None:
        root = tasker.Context()
        assert root.child() is not root
        assert root.child() is not root.child()


class TestWait:
    """``wait`` blocks the greenlet until the context or an ancestor is cancelled."""

    def test_wait_on_cancelled_returns_at_once(self) -> None:
        ctx = tasker.Context()
        ctx.cancel()
        assert ctx.wait() is True

    def test_wait_timeout_returns_false_when_live(self) -> None:
        ctx = tasker.Context()
        assert ctx.wait(0.01) is False
        assert ctx.child().wait(0) is False
        assert not ctx.cancelled

    @pytest.mark.parametrize(
        "depth", [pytest.param(0, id="wakes_on_cancel"), pytest.param(2, id="on_grandchild_wakes_when_root_cancelled")]
    )
    def test_wait(self, depth: int) -> None:
        root = tasker.Context()
        waited = root
        for _ in range(depth):
            waited = waited.child()
        waiter = gevent.spawn(waited.wait)
        gevent.idle()
        assert not waiter.ready()
        root.cancel()
        assert waiter.get(timeout=5) is True

    def test_wait_on_parent_does_not_wake_when_child_cancelled(self) -> None:
        root = tasker.Context()
        child = root.child()
        waiter = gevent.spawn(root.wait)
        gevent.idle()
        child.cancel()
        gevent.idle()
        assert not waiter.ready()
        root.cancel()
        assert waiter.get(timeout=5) is True

    def test_wait_again_after_a_timed_out_wait(self) -> None:
        root = tasker.Context()
        child = root.child()
        assert child.wait(0.001) is False
        waiter = gevent.spawn(child.wait)
        gevent.idle()
        root.cancel()
        assert waiter.get(timeout=5) is True

    def test_many_waiters_all_wake(self) -> None:
        root = tasker.Context()
        children = [root.child() for _ in range(10)]
        contexts = [root, *children, *(c.child() for c in children for _ in range(10))]
        waiters = [gevent.spawn(ctx.wait) for ctx in contexts]
        gevent.idle()
        assert not any(w.ready() for w in waiters)
        root.cancel()
        gevent.joinall(waiters, timeout=5)
        assert [w.value for w in waiters] == [True] * len(contexts)

    def test_waiters_on_other_branch_stay_parked(self) -> None:
        root = tasker.Context()
        left, right = root.child(), root.child()
        left_waiters = [gevent.spawn(left.child().wait) for _ in range(5)]
        right_waiters = [gevent.spawn(right.child().wait) for _ in range(5)]
        gevent.idle()
        left.cancel()
        gevent.joinall(left_waiters, timeout=5)
        assert all(w.value is True for w in left_waiters)
        assert not any(w.ready() for w in right_waiters)
        root.cancel()
        gevent.joinall(right_waiters, timeout=5)
        assert all(w.value is True for w in right_waiters)


class TestTimeout:
    """``child(timeout=...)`` cancels the child once the timeout passes."""

    def test_child_cancelled_after_timeout(self) -> None:
        root = tasker.Context()
        child = root.child(timeout=0.01)
        grandchild = child.child()
        assert grandchild.wait(5) is True
        assert child.cancelled and grandchild.cancelled
        assert not root.cancelled

    def test_zero_timeout(self) -> None:
        child = tasker.Context().child(timeout=0)
        assert child.wait(5) is True

    def test_timeout_child_cancelled_early_by_parent(self) -> None:
        root = tasker.Context()
        child = root.child(timeout=60)
        root.cancel()
        assert child.wait(5) is True

    def test_explicit_cancel_before_timeout(self) -> None:
        root = tasker.Context()
        child = root.child(timeout=60)
        child.cancel()
        assert child.wait(0) is True
        assert not root.cancelled

    @pytest.mark.parametrize("timeout", [-0.001, -1, -60.0])
    def test_negative_timeout(self, timeout: float) -> None:
        with pytest.raises(ValueError, match="timeout"):
            tasker.Context().child(timeout=timeout)
