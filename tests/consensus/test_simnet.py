"""SimNetwork: determinism, each fault kind, crashes, partitions and counters."""

from __future__ import annotations

import pytest

from consensus.simnet import Delivery, LinkFaults, SimNetwork

_NO_FAULTS = LinkFaults()


def _net(seed: int = 1, faults: LinkFaults = _NO_FAULTS, nodes: str = "abc") -> SimNetwork[int]:
    net: SimNetwork[int] = SimNetwork(seed, faults)
    for name in nodes:
        net.add(name)
    return net


def _drain(net: SimNetwork[int]) -> list[Delivery[int]]:
    out: list[Delivery[int]] = []
    while (t := net.next_time()) is not None:
        out.extend(net.pop_due(t))
    return out


def _traffic(net: SimNetwork[int], count: int = 200) -> list[Delivery[int]]:
    for i in range(count):
        net.send(i * 0.001, "abc"[i % 3], "abc"[(i + 1) % 3], i)
    return _drain(net)


def test_same_seed_same_deliveries_other_seed_differs() -> None:
    faults = LinkFaults(drop=0.2, duplicate=0.2, min_delay=0.001, max_delay=0.05)
    first = _traffic(_net(7, faults))
    assert first == _traffic(_net(7, faults))
    assert first != _traffic(_net(8, faults))


def test_no_faults_delivers_everything_once_within_delay_bounds() -> None:
    net = _net(3, LinkFaults(min_delay=0.002, max_delay=0.002))
    net.send(1.0, "a", "b", 42)
    assert net.next_time() == pytest.approx(1.002)
    assert net.pop_due(1.001) == []
    assert net.pop_due(1.002) == [Delivery(pytest.approx(1.002), "a", "b", 42)]  # type: ignore[arg-type]
    assert net.next_time() is None
    assert (net.stats.sent, net.stats.delivered, net.stats.dropped) == (1, 1, 0)


def test_drop_all_and_duplicate_all() -> None:
    lossy = _net(1, LinkFaults(drop=1.0))
    assert _traffic(lossy, 50) == []
    assert lossy.stats.dropped == 50
    doubled = _net(1, LinkFaults(duplicate=1.0))
    got = _traffic(doubled, 50)
    assert sorted(d.payload for d in got) == sorted(list(range(50)) * 2)
    assert (doubled.stats.duplicated, doubled.stats.delivered) == (50, 100)


def test_drop_rate_is_roughly_the_probability() -> None:
    net = _net(11, LinkFaults(drop=0.3))
    delivered = len(_traffic(net, 2000))
    assert 1200 < delivered < 1600  # 1400 expected; bounds are > 5 sigma away


def test_delay_spread_reorders_and_pop_due_is_time_ordered() -> None:
    net = _net(5, LinkFaults(min_delay=0.0, max_delay=1.0))
    for i in range(100):
        net.send(0.0, "a", "b", i)
    got = _drain(net)
    assert [d.payload for d in got] != list(range(100))  # overtaking happened
    assert [d.at for d in got] == sorted(d.at for d in got)


def test_pop_due_ties_are_in_send_order() -> None:
    net = _net(5, LinkFaults(min_delay=0.5, max_delay=0.5))
    for i in range(10):
        net.send(0.0, "a", "b", i)
    assert [d.payload for d in net.pop_due(0.5)] == list(range(10))


def test_partition_drops_across_groups_until_heal() -> None:
    net = _net(2, nodes="abcd")
    net.partition({"a", "b"}, {"c"})  # d is in the implicit rest group
    net.send(0, "a", "b", 1)
    net.send(0, "a", "c", 2)
    net.send(0, "c", "d", 3)
    net.send(0, "d", "d", 4)
    assert sorted(d.payload for d in _drain(net)) == [1, 4]
    net.heal()
    net.send(1, "a", "c", 5)
    assert [d.payload for d in _drain(net)] == [5]
    with pytest.raises(ValueError, match="two partition groups"):
        net.partition({"a"}, {"a", "b"})


def test_crash_discards_in_flight_even_after_restart_and_drops_sends() -> None:
    net = _net(4, LinkFaults(min_delay=1.0, max_delay=1.0))
    net.send(0, "a", "b", 1)  # in flight to b when b crashes
    net.send(0, "b", "a", 2)  # sent by b before it crashed: still arrives
    net.crash("b")
    net.send(0.1, "b", "a", 3)  # a crashed node sends nothing
    net.send(0.1, "a", "b", 4)  # nor receives
    net.restart("b")
    net.send(0.2, "a", "b", 5)
    assert [d.payload for d in _drain(net)] == [2, 5]
    assert net.stats.dropped == 3


def test_unknown_addresses() -> None:
    net = _net()
    net.send(0, "a", "zzz", 1)
    assert _drain(net) == []
    assert net.stats.dropped == 1
    with pytest.raises(ValueError, match="unknown address"):
        net.crash("zzz")
    with pytest.raises(ValueError, match="already"):
        net.add("a")


def test_set_faults_takes_effect_for_later_sends() -> None:
    net = _net(9, LinkFaults(drop=1.0))
    net.send(0, "a", "b", 1)
    net.set_faults(LinkFaults())
    net.send(0, "a", "b", 2)
    assert [d.payload for d in _drain(net)] == [2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drop": -0.1},
        {"drop": 1.5},
        {"duplicate": 2.0},
        {"min_delay": 0.2, "max_delay": 0.1},
        {"min_delay": -1.0},
    ],
)
def test_fault_model_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|probabilities"):
        LinkFaults(**kwargs)
