"""How compress schedules its modules: two in flight, the next one started as soon as either
running one ends, results in plan order, the first error in plan order stops the run. The module
work is replaced by stand-ins that wait on each other, so an order the scheduler must not take
would stall (a bounded wait, then a failure) instead of passing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from clusterprune import pipeline
from clusterprune.pipeline import Compute

WAIT_S = 10.0


@dataclass
class Run:
    started: list[str] = field(default_factory=list)  # in the order the modules started
    got: list[tuple[str, str]] = field(default_factory=list)  # (module, result) as yielded
    error: Exception | None = None  # what stopped the run


def run(
    monkeypatch: pytest.MonkeyPatch, names: list[str], work: Callable[[str], str], compute: Compute | None = None
) -> Run:
    """``_compressed_modules`` over a plan of ``names``, each module's work being ``work(name)``."""
    record = Run()
    lock = threading.Lock()

    def stand_in(ckpt, spec, m, plan, export, writers, compute):
        with lock:
            record.started.append(m.name)
        return work(m.name)

    monkeypatch.setattr(pipeline, "_compress_module", stand_in)
    plan = SimpleNamespace(modules=[SimpleNamespace(name=n) for n in names], specs={n: n for n in names})
    try:
        for m, result in pipeline._compressed_modules(None, plan, "fused", {}, compute or Compute()):
            record.got.append((m.name, result))
    except Exception as e:  # what the run stopped on, for the test to check
        record.error = e
    return record


def test_a_long_module_does_not_hold_back_the_module_after_a_short_one(monkeypatch):
    # "long" can only end once "third" has started: "third" must start when "short" ends
    third_started = threading.Event()

    def work(name: str) -> str:
        if name == "long" and not third_started.wait(WAIT_S):
            raise AssertionError("the third module did not start while the long one ran")
        if name == "third":
            third_started.set()
        return name.upper()

    r = run(monkeypatch, ["long", "short", "third", "fourth"], work)
    assert r.error is None
    assert r.got == [("long", "LONG"), ("short", "SHORT"), ("third", "THIRD"), ("fourth", "FOURTH")]


def test_no_more_than_two_modules_run_at_once(monkeypatch):
    running, most = [0], [0]
    lock = threading.Lock()

    def work(name: str) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.01)
        with lock:
            running[0] -= 1
        return name

    names = [f"m{i}" for i in range(12)]
    assert [n for n, _ in run(monkeypatch, names, work).got] == names
    assert most[0] == 2
    # one thread asked for: one module at a time
    most[0] = 0
    assert run(monkeypatch, names, work, Compute(num_threads=1)).started == names
    assert most[0] == 1


def test_the_first_error_in_plan_order_stops_the_run(monkeypatch):
    # "b" fails while "a" still runs: nothing starts after it, "a" is yielded, then b's error
    b_failed = threading.Event()

    def work(name: str) -> str:
        if name == "b":
            b_failed.set()
            raise ValueError("b broke")
        if name == "a" and not b_failed.wait(WAIT_S):
            raise AssertionError("b did not run beside a")
        return name

    r = run(monkeypatch, ["a", "b", "c", "d"], work)
    assert str(r.error) == "b broke"
    assert r.got == [("a", "a")] and r.started == ["a", "b"]


def test_an_earlier_error_wins_over_a_later_one(monkeypatch):
    b_failed = threading.Event()

    def work(name: str) -> str:
        if name == "b":
            b_failed.set()
            raise ValueError("b broke")
        if name == "a":
            b_failed.wait(WAIT_S)
            raise ValueError("a broke")
        return name

    r = run(monkeypatch, ["a", "b", "c"], work)
    assert str(r.error) == "a broke"
    assert r.got == [] and r.started == ["a", "b"]
