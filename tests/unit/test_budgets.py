"""The budgets' arithmetic, on a clock the test moves."""

from __future__ import annotations

import pytest

from service.application.budgets import (
    SHARED_KEY,
    Budgets,
    BytesInFlight,
    BytesPerKey,
    InFlight,
    RateBudget,
    RateLimited,
    SocketAdmission,
    retry_after_header,
)
from service.edge.budgets import address_key
from service.runtime.settings import Rate, Settings, SettingsError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_admits_its_burst_then_refuses_and_says_when_one_more_fits() -> None:
    clock = Clock()
    budget = RateBudget(Rate(3, 6.0), clock=clock)
    assert [budget.take("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("alice") == pytest.approx(2.0)  # one every 2 s
    assert budget.take("bob") == 0.0  # keys are apart
    clock.now += 1.9
    assert budget.take("alice") > 0
    clock.now += 0.1
    assert budget.take("alice") == 0.0
    assert budget.take("alice") == pytest.approx(2.0)


def test_a_fresh_key_is_admitted_whatever_the_clock_reads() -> None:
    """At some clock readings ``now + 60 - now`` is a hair over 60 in floating
    point; a fresh key's one request must not be refused for it."""
    clock = Clock()
    clock.now = 4090.833771576286  # such a reading
    assert (clock.now + 60.0) - clock.now - 60.0 > 0
    budget = RateBudget(Rate(1, 60.0), clock=clock)
    assert budget.peek("198.51.100.8") == 0.0
    assert budget.take("198.51.100.8") == 0.0
    assert budget.take("198.51.100.8") == pytest.approx(60.0)


def test_a_refusal_spends_nothing_and_the_budget_refills_evenly() -> None:
    clock = Clock()
    budget = RateBudget(Rate(10, 1.0), clock=clock)
    for _ in range(10):
        budget.take("k")
    for _ in range(100):
        assert budget.take("k") > 0
    clock.now += 0.5
    assert [budget.take("k") == 0.0 for _ in range(6)] == [True] * 5 + [False]


def test_peek_answers_as_take_would_without_spending() -> None:
    clock = Clock()
    budget = RateBudget(Rate(2, 10.0), clock=clock)
    assert budget.peek("k") == 0.0
    budget.take("k")
    budget.take("k")
    assert budget.peek("k") == pytest.approx(5.0)
    assert budget.take("k") == pytest.approx(5.0)
    clock.now += 5.0
    assert budget.peek("k") == 0.0 and budget.take("k") == 0.0


def test_no_rate_is_no_budget() -> None:
    budget = RateBudget(None)
    assert all(budget.take("k") == 0.0 for _ in range(10_000))
    assert len(budget) == 0


def test_idle_keys_are_forgotten_once_their_bucket_is_full_again() -> None:
    clock = Clock()
    budget = RateBudget(Rate(5, 10.0), clock=clock)
    for n in range(1000):
        budget.take(f"addr-{n}")
    assert len(budget) == 1000
    clock.now += 10.0  # every bucket full again; the next take sweeps
    budget.take("late")
    assert len(budget) == 1


def test_keys_past_the_cap_share_one_bucket_so_memory_stays_bounded() -> None:
    clock = Clock()
    budget = RateBudget(Rate(2, 60.0), clock=clock, max_keys=100)
    for n in range(100):
        budget.take(f"addr-{n}")
    # A flood from new addresses: each is a new key, but the table is full.
    answers = [budget.take(f"new-{n}") for n in range(50)]
    assert len(budget) == 101  # the 100 keys and the shared one
    assert SHARED_KEY in budget._full_at
    assert answers[:2] == [0.0, 0.0] and all(a > 0 for a in answers[2:])
    assert budget.take("addr-7") == 0.0  # a known key keeps its own bucket


def test_in_flight_counts_up_to_its_limit_and_forgets_a_key_at_zero() -> None:
    held = InFlight(2)
    assert held.acquire("alice") and held.acquire("alice")
    assert not held.acquire("alice")
    assert held.acquire("bob")
    held.release("alice")
    assert held.acquire("alice")
    for key in ("alice", "alice", "bob"):
        held.release(key)
    assert len(held) == 0
    assert all(InFlight(0).acquire("k") for _ in range(1000))


def test_bytes_in_flight_admit_one_of_any_size_and_refuse_past_the_limit() -> None:
    bodies = BytesInFlight(100)
    assert bodies.reserve(500)  # alone: admitted whatever its size
    assert not bodies.reserve(1)
    bodies.release(500)
    assert bodies.reserve(60) and bodies.reserve(40)
    assert not bodies.reserve(1)
    bodies.release(40)
    assert bodies.reserve(40)


def test_a_session_gate_spends_once_even_when_the_command_runs_twice() -> None:
    clock = Clock()
    budgets = Budgets(Settings(user_sessions=Rate(1, 60.0)), clock=clock)
    first = budgets.session_gate("alice")
    first()
    first()  # the writer ran the command again: still the one session
    second = budgets.session_gate("alice")
    with pytest.raises(RateLimited) as refused:
        second()
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after == pytest.approx(60.0)
    budgets.session_gate("bob")()


def test_a_tokenless_socket_holds_an_address_slot_until_it_authenticates() -> None:
    clock = Clock()
    settings = Settings(address_pending_upgrades=2, user_sockets=1)
    budgets = Budgets(settings, clock=clock)
    a, b, c = (SocketAdmission(budgets, "10.0.0.1") for _ in range(3))
    assert a.before_upgrade(None) == 0.0 and b.before_upgrade(None) == 0.0
    assert c.before_upgrade(None) > 0  # two already wait for their token
    assert a.authenticated("alice")  # a's address slot is free again
    assert c.before_upgrade(None) == 0.0
    assert not b.authenticated("alice")  # alice has her one live socket
    a.ended()
    assert SocketAdmission(budgets, "10.0.0.2").before_upgrade("alice") == 0.0
    assert budgets.failed_upgrades.peek("10.0.0.1") == 0.0  # nobody failed


def test_upgrades_that_never_authenticate_spend_the_address_failed_budget() -> None:
    clock = Clock()
    budgets = Budgets(Settings(address_failed_upgrades=Rate(3, 30.0)), clock=clock)
    for _ in range(3):
        socket = SocketAdmission(budgets, "10.0.0.9")
        assert socket.before_upgrade(None) == 0.0
        socket.ended()
        socket.ended()  # ending twice charges once
    refused = SocketAdmission(budgets, "10.0.0.9").before_upgrade(None)
    assert refused == pytest.approx(10.0)
    assert budgets.pending_upgrades.held("10.0.0.9") == 0
    assert SocketAdmission(budgets, "10.0.0.10").before_upgrade(None) == 0.0
    # A token in the upgrade request is not the address's business.
    assert SocketAdmission(budgets, "10.0.0.9").before_upgrade("carol") == 0.0


def test_a_users_upgrades_are_a_rate_spent_once_per_socket_whichever_way_it_authenticates() -> None:
    clock = Clock()
    budgets = Budgets(Settings(user_upgrades=Rate(2, 10.0)), clock=clock)
    header = SocketAdmission(budgets, "10.0.0.1")
    assert header.before_upgrade("alice") == 0.0
    assert header.authenticated("alice")  # the protocol asks again: not spent twice
    header.ended()
    framed = SocketAdmission(budgets, "10.0.0.1")
    assert framed.before_upgrade(None) == 0.0
    assert framed.authenticated("alice")  # the token came in an auth frame
    framed.ended()
    # Both spent, both closed: live sockets are free, upgrades are not.
    assert budgets.user_sockets.held("alice") == 0
    over = SocketAdmission(budgets, "10.0.0.1")
    assert over.before_upgrade("alice") == pytest.approx(5.0)
    assert budgets.user_sockets.held("alice") == 0  # a refusal holds nothing
    late = SocketAdmission(budgets, "10.0.0.1")
    assert late.before_upgrade(None) == 0.0
    assert not late.authenticated("alice")
    late.ended()
    assert budgets.failed_upgrades.peek("10.0.0.1") == 0.0  # it did authenticate
    assert SocketAdmission(budgets, "10.0.0.1").before_upgrade("bob") == 0.0
    clock.now += 5.0
    assert SocketAdmission(budgets, "10.0.0.1").before_upgrade("alice") == 0.0


def test_bytes_per_key_are_a_share_each_and_one_body_alone_always_fits() -> None:
    bodies = BytesPerKey(100)
    assert bodies.reserve("a", 60) and bodies.reserve("a", 40)
    assert not bodies.reserve("a", 1)
    assert bodies.reserve("b", 100)  # another key's share is its own
    assert bodies.reserve("c", 500)  # alone, whatever its size
    bodies.release("a", 40)
    assert bodies.reserved("a") == 60 and bodies.reserve("a", 40)
    for key, size in (("a", 100), ("b", 100), ("c", 500)):
        bodies.release(key, size)
    assert len(bodies) == 0  # keys go with their last byte
    assert BytesPerKey(0).reserve("a", 10**9) and BytesPerKey(0).reserve("a", 1)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.001, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_and_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1000/s", Rate(1000, 1.0)),
        ("60/min", Rate(60, 60.0)),
        ("3/h", Rate(3, 3600.0)),
        ("500/10s", Rate(500, 10.0)),
        (" 7 / 2min ", Rate(7, 120.0)),
        ("off", None),
        ("0", None),
    ],
)
def test_rates_are_read_from_the_environment(text: str, rate: Rate | None) -> None:
    settings = Settings.from_env({"SESSIOND_USER_WRITES": text})
    assert settings.user_writes == rate


@pytest.mark.parametrize("text", ["fast", "10", "10/day", "10/0s", "-1/s"])
def test_a_rate_that_does_not_parse_is_a_one_line_error_naming_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="SESSIOND_USER_WRITES"):
        Settings.from_env({"SESSIOND_USER_WRITES": text})


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_a_client_address_is_its_ipv4_address_or_its_ipv6_64(address: str, key: str) -> None:
    # Twice: the second answer comes from the cache and is the same.
    assert address_key(address) == key
    assert address_key(address) == key
