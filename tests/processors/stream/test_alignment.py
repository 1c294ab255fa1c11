"""Event-time alignment: touchpoints come out of the hold in event-time order, and all of them do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.stream.alignment import (
    Alignment,
    PartitionReport,
    PeerPositions,
    ReadProgress,
    ahead_of,
    decode_progress,
    encode_progress,
)

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def report(partition: int, minutes: int | None, caught_up: bool = False) -> PartitionReport:
    return PartitionReport("raw.web", partition, None if minutes is None else at(minutes), caught_up)


times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(
    st.lists(
        st.builds(
            PartitionReport,
            st.text(min_size=1, max_size=20),
            st.integers(0, 10_000),
            st.none() | times,
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_a_progress_header_reads_back_as_written(reports: list[PartitionReport]) -> None:
    assert decode_progress(encode_progress(reports)) == reports


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not JSON"),
        (b'{"raw.web": 1}', "not a list of partition reports"),
        (b'[["raw.web", 0, 1]]', "not a [topic, partition, latest, caught_up] report"),
        (b'[["raw.web", "0", 1, false]]', "not a [topic, partition, latest, caught_up] report"),
        (b'[["raw.web", 0, 1.5, false]]', "not a [topic, partition, latest, caught_up] report"),
        (b'[["raw.web", 0, 1, 0]]', "not a [topic, partition, latest, caught_up] report"),
        (b'[["raw.web", 0, 999999999999999999, false]]', "latest event time out of range"),
    ],
)
def test_a_malformed_progress_header_is_refused_with_the_reason(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode_progress(value)


def test_read_progress_reports_each_partitions_latest_time_and_whether_all_was_read() -> None:
    progress = ReadProgress()
    progress.saw(("raw.web", 0), [at(5), at(3)])
    progress.saw(("raw.web", 0), [at(4)])  # an earlier one later: the latest stays
    progress.saw(("raw.web", 1), [])  # records that made no touchpoint (dead letters)
    reports = progress.reports(
        {("raw.web", 0): (10, 12), ("raw.web", 1): (7, 7), ("raw.phone", 0): (0, None)}, now=1e9
    )
    assert reports == [
        PartitionReport("raw.phone", 0, None, False),
        PartitionReport("raw.web", 0, at(5), False),
        PartitionReport("raw.web", 1, None, True),
        # raw.phone[0] was not fetched yet: it may hold anything, so it holds the others back
    ]


def test_a_partition_read_within_seconds_of_its_writing_counts_as_caught_up() -> None:
    """A live feed: the reader is seconds behind the head, so nobody waits for its few unread records."""
    progress = ReadProgress(live_seconds=5)
    progress.saw(("raw.web", 0), [at(5)], written_at=1000.0)
    positions = {("raw.web", 0): (10, 12)}  # two records fetched and not read yet
    assert progress.reports(positions, now=1004.9) == [PartitionReport("raw.web", 0, at(5), True)]
    # Working through a backlog: the records being read were written long ago.
    assert progress.reports(positions, now=1005.0) == [PartitionReport("raw.web", 0, at(5), False)]
    progress.forget(("raw.web", 0))
    assert progress.reports(positions, now=1001.0) == [PartitionReport("raw.web", 0, None, False)]


def test_the_frontier_is_the_earliest_time_among_partitions_still_being_read() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5)
    assert alignment.frontier(0) is None  # nothing reported: nothing waits
    alignment.report([report(0, 10), report(1, 4), report(2, 1, caught_up=True)], now=0)
    assert alignment.frontier(0) == at(4)  # partition 2 has read everything: it holds nothing back
    for minutes, name in ((1, "a"), (4, "b"), (5, "c"), (9, "d")):
        alignment.hold(at(minutes), name)
    assert alignment.release(0) == ["a", "b"]
    alignment.report([report(1, 9)], now=1)
    assert alignment.release(1) == ["c", "d"]
    assert len(alignment) == 0


def test_a_partition_without_a_time_yet_holds_everything_until_it_has_one() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5)
    alignment.report([report(0, 10), report(1, None)], now=0)
    alignment.hold(at(1), "a")
    assert alignment.release(0) == []
    alignment.report([report(1, 2)], now=1)
    assert alignment.release(1) == ["a"]


def test_a_partition_no_longer_reported_stops_holding_the_others_back() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, stall_seconds=60)
    alignment.report([report(0, 10), report(1, 2)], now=0)
    alignment.hold(at(8), "a")
    alignment.report([report(0, 11)], now=3)  # partition 1's reader is gone
    assert alignment.release(4.9) == [] and alignment.lapsed(4.9) == {}
    assert alignment.release(5.0) == ["a"]
    assert alignment.lapsed(5.0) == {("raw.web", 1): "not reported for 5.0 s"}
    alignment.report([report(1, 3)], now=6)  # reported again: it holds again
    alignment.hold(at(9), "b")
    assert alignment.release(6) == [] and alignment.lapsed(6) == {}


def test_a_partition_read_in_the_stages_own_process_is_not_idle_while_that_process_folds() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, stall_seconds=60)
    alignment.expect([("raw.web", 0), ("raw.web", 1), ("raw.web", 2)], now=0)
    alignment.report([report(0, 10), report(1, 2)], now=0)
    alignment.hold(at(8), "a")
    for now in (3, 6, 9):  # other workers' reports move the clock; partition 1's reader is busy folding
        alignment.report([report(0, 10 + now)], now=now)
        alignment.keep_alive([("raw.web", 1), ("raw.web", 2)], now)
        assert alignment.release(now) == []
    # Partition 2 was expected but never reported (a reader with nothing to read sends nothing):
    # kept alive, it would hold everything for good.
    assert alignment.lapsed(9) == {("raw.web", 2): "not reported for 9.0 s"}
    alignment.report([report(0, 20), report(1, 9)], now=10)
    assert alignment.release(10) == ["a"]
    alignment.hold(at(15), "b")
    alignment.keep_alive([("raw.web", 1)], 70)
    assert alignment.release(70) == ["b"]  # kept alive, but its time stood still for a minute
    assert alignment.lapsed(70)[("raw.web", 1)] == "its time has not moved for 60.0 s"


def test_each_lapse_is_told_once_and_again_after_the_partition_was_waited_for_or_cleared() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, stall_seconds=60)
    alignment.report([report(0, 10), report(1, 2)], now=0)
    assert alignment.newly_lapsed(4) == {}
    assert alignment.newly_lapsed(5) == {
        ("raw.web", 0): "not reported for 5.0 s",
        ("raw.web", 1): "not reported for 5.0 s",
    }
    assert alignment.newly_lapsed(6) == {}  # still lapsed: told already
    alignment.report([report(1, 3)], now=7)  # waited for again, then lapses again
    assert alignment.newly_lapsed(7) == {}
    assert alignment.newly_lapsed(12) == {("raw.web", 1): "not reported for 5.0 s"}
    alignment.clear()  # a rebalance: the partitions are known anew
    alignment.report([report(0, 20)], now=20)
    assert alignment.newly_lapsed(25) == {("raw.web", 0): "not reported for 5.0 s"}


def test_a_reported_partition_is_waited_for_however_slow_until_it_stalls() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, stall_seconds=60)
    alignment.hold(at(8), "a")
    for now in range(0, 60, 3):  # reported all along, its time moving only once
        alignment.report([report(0, 10 + now), report(1, 2 if now < 30 else 3)], now=now)
        assert alignment.release(now) == []
    assert alignment.partition_states(59) == {"waiting": 2, "caught_up": 0, "idle": 0}
    alignment.report([report(0, 99), report(1, 3)], now=89)
    assert alignment.release(89) == []
    alignment.report([report(0, 100), report(1, 3)], now=90)  # stood still for stall_seconds
    assert alignment.release(90) == ["a"]
    assert alignment.partition_states(90) == {"waiting": 1, "caught_up": 0, "idle": 1}
    assert alignment.lapsed(90) == {("raw.web", 1): "its time has not moved for 60.0 s"}


def test_new_records_on_a_caught_up_partition_are_waited_for_again() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, stall_seconds=10)
    alignment.report([report(0, 10), report(1, 2, caught_up=True)], now=0)
    alignment.hold(at(5), "a")
    alignment.report([report(0, 10), report(1, 2, caught_up=False)], now=20)  # records arrived, none read
    assert alignment.release(20) == []  # its time did not move, but it has something new to read
    alignment.report([report(0, 10), report(1, 2, caught_up=False)], now=30)
    assert alignment.release(30) == ["a"]  # and then it stalled


def test_a_partition_read_again_from_an_earlier_offset_holds_from_its_earlier_time() -> None:
    progress = ReadProgress()
    progress.saw(("raw.web", 0), [at(50)])
    progress.forget(("raw.web", 0))  # rewound: its time starts over
    assert progress.reports({("raw.web", 0): (0, 90)}) == [PartitionReport("raw.web", 0, None, False)]
    alignment: Alignment[str] = Alignment(idle_seconds=5)
    alignment.report([report(0, 50), report(1, 60)], now=0)
    alignment.report([report(0, 10)], now=1)  # its reader went back
    alignment.hold(at(20), "a")
    assert alignment.release(1) == []
    alignment.report([report(0, 30)], now=2)
    assert alignment.release(2) == ["a"]


def test_the_hold_is_bounded_and_the_earliest_go_first() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5, max_held=2)
    alignment.report([report(0, 0)], now=0)
    for minutes, name in ((3, "c"), (1, "a"), (2, "b"), (4, "d")):
        alignment.hold(at(minutes), name)
    assert alignment.release(0) == ["a", "b"]
    assert alignment.overflowed == 2 and len(alignment) == 2


def test_items_at_the_same_time_come_out_in_the_order_held() -> None:
    alignment: Alignment[str] = Alignment()
    for name in "xyz":
        alignment.hold(at(1), name)
    assert alignment.release(0) == ["x", "y", "z"]


def test_clearing_forgets_the_held_items_and_the_partitions() -> None:
    alignment: Alignment[str] = Alignment()
    alignment.report([report(0, 0)], now=0)
    alignment.hold(at(1), "a")
    alignment.clear()
    assert len(alignment) == 0 and alignment.frontier(0) is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_partitions_read_at_any_speeds_fold_in_event_time_order_and_all_of_them(data: st.DataObject) -> None:
    """Each partition in event-time order, read in any interleaving, reported after each read (as
    normalise does): the touchpoints come out in event-time order, and every one by the end."""
    partitions = data.draw(
        st.lists(st.lists(st.integers(0, 500), min_size=0, max_size=15).map(sorted), min_size=1, max_size=5)
    )
    alignment: Alignment[tuple[int, int, int]] = Alignment(idle_seconds=1_000)
    read = [0] * len(partitions)
    released: list[tuple[int, int, int]] = []
    pending = [p for p, events in enumerate(partitions) if events]
    # Every partition is reported before anything is read: the first fetch tells the high-water marks.
    alignment.report([report(p, None, caught_up=not events) for p, events in enumerate(partitions)], now=0)
    while pending:
        p = data.draw(st.sampled_from(pending))
        take = data.draw(st.integers(1, len(partitions[p]) - read[p]))
        for i in range(read[p], read[p] + take):
            alignment.hold(at(partitions[p][i]), (partitions[p][i], p, i))
        read[p] += take
        if read[p] == len(partitions[p]):
            pending.remove(p)
        alignment.report(
            [report(p, partitions[p][read[p] - 1], caught_up=read[p] == len(partitions[p]))], now=0
        )
        released += alignment.release(0)
    assert [minutes for minutes, _, _ in released] == sorted(minutes for minutes, _, _ in released)
    assert sorted(released) == sorted(
        (m, p, i) for p, events in enumerate(partitions) for i, m in enumerate(events)
    )
    assert len(alignment) == 0


def test_partitions_more_than_the_window_ahead_of_the_slowest_are_paused() -> None:
    reports = [report(0, 10), report(1, 75), report(2, 200, caught_up=True), report(3, None)]
    window = timedelta(hours=1)
    assert ahead_of(reports, None, window) == set()  # nothing is waited for
    assert ahead_of(reports, at(10), window) == {("raw.web", 1), ("raw.web", 2)}
    assert ahead_of(reports, at(-100), window) == {("raw.web", 0), ("raw.web", 1), ("raw.web", 2)}


def test_a_report_written_earlier_than_one_already_read_does_not_turn_the_clock_back() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5)
    alignment.report([report(0, 10), report(1, 2)], now=10)
    alignment.report([report(1, 3)], now=9)  # another worker's clock runs a second behind
    alignment.hold(at(8), "a")
    assert alignment.release(14.9) == []
    assert alignment.release(15) == ["a"]


def _fold_order(
    workers: list[list[list[int]]],
    fetches: list[list[int]],
    speeds: list[int],
    starts: list[int],
    expect: bool = True,
    across: bool = True,
) -> tuple[list[int], int]:
    """Workers reading their partitions (event times, minutes) a fetch at a time from second
    `starts[w]` on, every `speeds[w]` seconds, reporting with each batch, pausing what ran ahead of
    the slowest partition, their own or (`across`) another's as last published, and publishing
    their positions, as the worker does (`processors.stream.app`); the reconstruct stage, which
    expects every partition (`expect`), holding and releasing each second. Returns the event times
    in the order released, and the most touchpoints ever held."""
    window = timedelta(hours=1)
    stage: Alignment[int] = Alignment(idle_seconds=5, max_held=10**9, stall_seconds=10**9)
    progress = [ReadProgress() for _ in workers]
    reads: list[Alignment[None]] = [Alignment(idle_seconds=5, stall_seconds=5) for _ in workers]
    peers = [PeerPositions(stale_seconds=15) for _ in workers]
    paused: list[set[tuple[str, int]]] = [set() for _ in workers]
    read = [[0] * len(partitions) for partitions in workers]
    released: list[int] = []
    most_held = 0
    published: list[list[PartitionReport]] = [[] for _ in workers]

    def key(w: int, p: int) -> tuple[str, int]:
        return (f"raw.w{w}", p)

    if expect:
        stage.expect(
            [key(w, p) for w, partitions in enumerate(workers) for p in range(len(partitions))], now=0
        )
    for now in range(5_000):
        for w, partitions in enumerate(workers):
            if now < starts[w] or now % speeds[w]:
                continue
            sent = False
            for p, events in enumerate(partitions):
                if key(w, p) in paused[w] or read[w][p] == len(events):
                    continue
                fetched = events[read[w][p] : read[w][p] + fetches[w][p]]
                read[w][p] += len(fetched)
                progress[w].saw(key(w, p), (at(m) for m in fetched), written_at=0.0)  # a backlog
                for minutes in fetched:
                    stage.hold(at(minutes), minutes)
                sent = True
            positions = {key(w, p): (read[w][p], len(events)) for p, events in enumerate(partitions)}
            reports = progress[w].reports(positions, now=1e9)
            if sent or paused[w]:  # a batch's touchpoints messages, or the paused worker's report
                stage.report(reports, now)
            reads[w].report(reports, now)
            frontiers = [reads[w].frontier(now)]
            if across:
                frontiers.append(peers[w].frontier(set(positions), now))
            frontier = min((t for t in frontiers if t is not None), default=None)
            paused[w] = ahead_of(reports, frontier, window)
            published[w] = [
                PartitionReport(
                    r.topic, r.partition, r.latest, r.caught_up or (r.topic, r.partition) in paused[w]
                )
                for r in reports
            ]
        for w in range(len(workers)):  # what each published reaches the others a second later
            for other, follower in enumerate(peers):
                if other != w and published[w]:
                    follower.update(f"w{w}", published[w], now)
        released += stage.release(now)
        most_held = max(most_held, len(stage))
        done = all(r == len(e) for w, ps in enumerate(workers) for r, e in zip(read[w], ps, strict=True))
        if done and not len(stage):
            return released, most_held
    raise AssertionError("the workers never finished: they wait on each other")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_workers_starting_apart_and_reading_at_any_speeds_fold_in_event_time_order(
    data: st.DataObject,
) -> None:
    """However the partitions are spread over workers, however dense, however fast each worker reads
    and however late (within the idle time) it starts, everything comes out, in event-time order."""
    workers = data.draw(
        st.lists(
            st.lists(st.lists(st.integers(0, 3_000), max_size=40).map(sorted), min_size=1, max_size=3),
            min_size=2,
            max_size=3,
        )
    )
    fetches = [[data.draw(st.integers(1, 8)) for _ in partitions] for partitions in workers]
    speeds = [data.draw(st.integers(1, 3)) for _ in workers]
    # First batch by second 4 at the latest: within the idle time, past which it is not waited for.
    starts = [data.draw(st.integers(0, 2)) for _ in workers]
    across = data.draw(st.booleans())
    released, _ = _fold_order(workers, fetches, speeds, starts, across=across)
    assert released == sorted(m for partitions in workers for events in partitions for m in events)


def test_without_expecting_every_partition_a_worker_starting_later_folds_late() -> None:
    """The first worker to report would have its touchpoints folded before a later one's earlier
    touchpoints arrive: what expecting every raw partition at the start prevents."""
    workers, fetches, speeds, starts = [[[10, 20, 30]], [[5, 15, 25]]], [[3], [3]], [1, 1], [0, 2]
    assert _fold_order(workers, fetches, speeds, starts)[0] == [5, 10, 15, 20, 25, 30]
    assert _fold_order(workers, fetches, speeds, starts, expect=False)[0] == [10, 20, 30, 5, 15, 25]


def test_a_worker_with_sparse_partitions_waits_for_one_with_a_dense_partition() -> None:
    """Worker 0 reads a dense partition (a minute apart) slowly; worker 1 two sparse ones (an hour
    apart) fast. Paced by its own partitions only, worker 1 runs days ahead and the hold fills with
    its touchpoints; paced by worker 0's published positions too, it waits, and little is held."""
    minutes = 3 * 24 * 60
    dense = list(range(minutes))
    sparse = [list(range(offset, minutes, 60)) for offset in (7, 29)]
    workers, fetches, speeds, starts = [[dense], sparse], [[10], [2, 2]], [3, 1], [0, 0]
    alone, held_alone = _fold_order(workers, fetches, speeds, starts, across=False)
    paced, held_paced = _fold_order(workers, fetches, speeds, starts)
    assert alone == paced == sorted(dense + sparse[0] + sparse[1])
    assert held_alone >= 130 and held_paced <= 10


def test_a_worker_hears_from_the_others_which_partitions_pace() -> None:
    peers = PeerPositions(stale_seconds=15)
    assert peers.frontier(set(), now=0) is None  # nothing heard yet
    peers.update("a", [report(0, 200), report(1, 100), report(2, 50, caught_up=True), report(3, None)], now=0)
    peers.update("b", [report(4, 150)], now=1)
    # 2 is paused or read to the end, 3 has no time yet: neither paces anybody.
    assert peers.frontier(set(), now=2) == at(100)
    assert peers.frontier({("raw.web", 1)}, now=2) == at(150)  # read here now (a rebalance moved it)
    peers.update("a", [report(0, 210), report(1, 300)], now=3)  # a's newest replaces its last
    assert peers.frontier(set(), now=4) == at(150)
    assert peers.frontier(set(), now=16) == at(210)  # b not heard from for 15 s: gone
    assert peers.frontier(set(), now=18) is None


def test_partitions_expected_but_not_yet_reported_hold_everything_for_the_idle_time() -> None:
    alignment: Alignment[str] = Alignment(idle_seconds=5)
    alignment.expect([("raw.web", 0), ("raw.web", 1)], now=0)
    alignment.report([report(0, 10)], now=1)  # the first worker reports; the other's is on its way
    alignment.hold(at(8), "a")
    assert alignment.release(1) == []
    alignment.report([report(1, 9)], now=2)
    assert alignment.release(2) == ["a"]
    alignment.expect([("raw.web", 1), ("raw.web", 2)], now=3)  # known ones stay as reported
    alignment.hold(at(9), "b")
    assert alignment.release(3) == []  # partition 2 has no report yet
    alignment.report([report(0, 11), report(1, 12)], now=7)
    assert alignment.release(7.9) == []
    assert alignment.release(8) == ["b"]  # nobody reads partition 2: after the idle time it holds nothing
