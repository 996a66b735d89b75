"""The connection lifecycle: the one table of what may follow what.

Theory of operation
-------------------
A connection walks

    CONNECTING -> ACCEPTED -> AUTHENTICATED -> SERVICES_READY -> PROCESSING_READY

and may go to CLOSED from any of them. :class:`ConnectionLifecycle` is that
walk, written once as a python-statemachine class; the docs' diagram is
rendered from it (``sessiond lifecycle --mermaid``), so picture and code
cannot drift apart.

The machine *decides*; the Connection aggregate *records*. Before recording a
transition the aggregate asks :func:`consult` what the machine says: the
target state, or a refusal. The machine is never the place where state is
kept: the aggregate's ``state`` attribute is, and it is only ever changed by
applying a recorded event. That is what lets a connection be rebuilt from its
events without running any machine callback a second time: replay assigns the
recorded state, it does not re-send the transition.

The machine here has no callbacks at all (it is the table, with no I/O); the
service reacts to recorded events instead. To add a state, see
docs/adr/0003-model-the-lifecycle-as-one-statemachine-class.md.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed


class ConnectionLifecycle(StateMachine):
    """The states a connection walks, and the transitions between them."""

    CONNECTING = State("Connecting", value="CONNECTING", initial=True)
    ACCEPTED = State("Accepted", value="ACCEPTED")
    AUTHENTICATED = State("Authenticated", value="AUTHENTICATED")
    SERVICES_READY = State("Services ready", value="SERVICES_READY")
    PROCESSING_READY = State("Processing ready", value="PROCESSING_READY")
    CLOSED = State("Closed", value="CLOSED", final=True)

    accept = CONNECTING.to(ACCEPTED)
    authenticate = ACCEPTED.to(AUTHENTICATED)
    attach = AUTHENTICATED.to(SERVICES_READY)
    go_live = SERVICES_READY.to(PROCESSING_READY)
    close = (
        CONNECTING.to(CLOSED)
        | ACCEPTED.to(CLOSED)
        | AUTHENTICATED.to(CLOSED)
        | SERVICES_READY.to(CLOSED)
        | PROCESSING_READY.to(CLOSED)
    )


class _Probe:
    """A bare model the machine is bound to; holds a state value, nothing else."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class _Referee(threading.local):
    """One machine per lifecycle class per thread, bound to a probe.

    Building a machine costs far more than asking it, so it is reused: the
    probe is set to the state being asked about, and the machine reads its
    configuration from the probe.
    """

    def __init__(self) -> None:
        self.machines: dict[type[StateMachine], tuple[_Probe, StateMachine]] = {}

    def get(self, machine_class: type[StateMachine], state: str) -> tuple[_Probe, StateMachine]:
        entry = self.machines.get(machine_class)
        if entry is None:
            probe = _Probe(state)
            entry = (probe, machine_class(model=probe))
            self.machines[machine_class] = entry
        entry[0].state = state
        return entry

    def forget(self, machine_class: type[StateMachine]) -> None:
        self.machines.pop(machine_class, None)


_referee = _Referee()


@functools.cache
def _is_pure_table(machine_class: type[StateMachine]) -> bool:
    """True when no transition has a guard or validator, so the machine's
    answer depends on (state, transition) alone and can be remembered."""
    return all(
        not list(t.cond) and not list(t.validators)
        for state in machine_class.states
        for t in state.transitions
    )


# Remembered answers of pure-table machines: (class, state, transition) -> target.
_answers: dict[tuple[type[StateMachine], str, str], str | None] = {}


def consult(machine_class: type[StateMachine], state: str, transition: str) -> str | None:
    """Ask the machine where ``transition`` leads from ``state``.

    Returns the target state's value, or None if the machine refuses. Nothing
    outside the probe changes either way. A machine without guards is asked
    once per (state, transition) and its answer remembered: asking costs about
    0.17 ms, remembering about 0.1 µs, and the answer cannot change.

    A name that is not one of the machine's transitions, or a state it does
    not have (a log written by a node with a newer lifecycle), is refused:
    python-statemachine would otherwise raise AttributeError or KeyError.
    """
    key = (machine_class, state, transition)
    if key in _answers:
        return _answers[key]
    if not _knows(machine_class, state, transition):
        return None
    target = _ask(machine_class, state, transition)
    if _is_pure_table(machine_class):
        _answers[key] = target
    return target


def _knows(machine_class: type[StateMachine], state: str, transition: str) -> bool:
    return state in _state_set(machine_class) and transition in _transition_set(machine_class)


@functools.cache
def _state_set(machine_class: type[StateMachine]) -> frozenset[str]:
    return frozenset(state_values(machine_class))


@functools.cache
def _transition_set(machine_class: type[StateMachine]) -> frozenset[str]:
    return frozenset(transition_names(machine_class))


def _ask(machine_class: type[StateMachine], state: str, transition: str) -> str | None:
    probe, machine = _referee.get(machine_class, state)
    try:
        machine.send(transition)
    except TransitionNotAllowed:
        return None
    target = probe.state
    probe.state = state
    if machine.is_terminated:
        # A machine that reached a final state refuses every later event,
        # whatever its probe says: build a fresh one next time.
        _referee.forget(machine_class)
    return target


def state_values(machine_class: type[StateMachine]) -> list[str]:
    """Every state's value, in definition order."""
    return [str(s.value) for s in machine_class.states]


def initial_state(machine_class: type[StateMachine]) -> str:
    initial: Any = machine_class.initial_state
    return str(initial.value)


@functools.cache
def final_states(machine_class: type[StateMachine]) -> frozenset[str]:
    """The values of the final states (asked on every transition: remembered)."""
    return frozenset(str(s.value) for s in machine_class.states if s.final)


def live_state(machine_class: type[StateMachine]) -> str:
    """The state a connection is live in (messages, token refreshes)."""
    lifecycle: Any = machine_class
    return str(lifecycle.PROCESSING_READY.value)


def transition_names(machine_class: type[StateMachine]) -> list[str]:
    return [str(e) for e in machine_class._events]


def mermaid(machine_class: type[StateMachine] = ConnectionLifecycle) -> str:
    """The lifecycle diagram, rendered from the class itself."""
    return f"{machine_class:mermaid}"
