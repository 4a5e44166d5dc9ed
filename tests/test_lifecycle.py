"""The session's end as one state: every transition, without threads, processes or wandb."""

from __future__ import annotations

import time

import pytest

from primus_lens_inject.lifecycle import TRANSITIONS, End, Event, Phase


def ended(*events: Event) -> End:
    end = End()
    for event in events:
        assert end.move(event), (end.phase, event)
    return end


def test_exit_without_a_followed_run_closes_once():
    end = ended(Event.CLOSE)
    assert end.phase is Phase.CLOSING
    assert not end.move(Event.CLOSE)  # a second end path (SIGTERM during atexit) only waits
    assert end.move(Event.CLOSED) and end.phase is Phase.CLOSED
    assert not end.move(Event.CLOSE) and not end.move(Event.WANDB_EXITED)  # the late hook: done
    assert end.phase is Phase.CLOSED


def test_atexit_with_a_followed_run_waits_for_wandbs_teardown():
    end = ended(Event.DEFER_TO_WANDB)
    assert end.phase is Phase.AWAITING_WANDB
    assert end.allows(Event.DEFER_TO_WANDB)  # deferring twice changes nothing
    assert end.move(Event.WANDB_EXITED) and end.phase is Phase.WANDB_DONE
    assert end.move(Event.CLOSE) and end.phase is Phase.CLOSING
    assert end.move(Event.CLOSED) and end.phase is Phase.CLOSED


def test_a_signal_that_closes_while_wandb_tears_down_is_waited_for():
    end = ended(Event.DEFER_TO_WANDB, Event.CLOSE)
    assert end.move(Event.WANDB_EXITED)  # the late hook goes on to wait for the close
    assert end.phase is Phase.CLOSING


def test_the_late_hook_without_a_deferral_does_nothing():
    end = End()
    assert not end.allows(Event.WANDB_EXITED) and not end.move(Event.WANDB_EXITED)
    assert end.phase is Phase.OPEN


@pytest.mark.parametrize("phase", [Phase.CLOSING, Phase.CLOSED])
def test_no_deferral_once_closing(phase: Phase):
    end = End()
    end.phase = phase
    assert not end.move(Event.DEFER_TO_WANDB) and end.phase is phase


def test_every_transition_starts_and_ends_in_a_phase_and_closed_is_final():
    assert all(isinstance(phase, Phase) and isinstance(event, Event) and isinstance(to, Phase)
               for (phase, event), to in TRANSITIONS.items())
    assert not [key for key in TRANSITIONS if key[0] is Phase.CLOSED]
    assert {to for to in TRANSITIONS.values()} == set(Phase) - {Phase.OPEN}


def test_one_deadline_per_process_end_and_a_whole_budget_per_run():
    end = End()
    before = time.monotonic()
    first = end.deadline(5.0)
    assert before + 5.0 <= first <= time.monotonic() + 5.0
    assert end.deadline(100.0) == first  # exit after finish: what is left, not a new budget
    end.new_run()
    assert end.deadline(100.0) > first
