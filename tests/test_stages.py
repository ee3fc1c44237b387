"""xmodal.indexer.ingest.stages: the thread-pool stage the write path runs decoding and inference on."""
import threading
import time

import pytest

from xmodal.indexer.ingest.stages import LaneIds, ordered_map


def test_results_come_back_in_input_order_even_when_later_items_finish_first():
    def slow_first(i):
        time.sleep(0.05 if i == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_first, range(10), workers=3, prefetch=4)) == [i * i for i in range(10)]


def test_no_more_than_prefetch_items_are_taken_ahead_of_the_consumer():
    taken = []

    def source():
        for i in range(100):
            taken.append(i)
            yield i

    stream = ordered_map(lambda i: i, source(), workers=2, prefetch=5)
    assert next(stream) == 0
    assert len(taken) <= 5
    stream.close()


def test_an_error_in_the_function_surfaces_at_its_turn_and_one_in_the_source_at_once():
    def fail_on_3(i):
        if i == 3:
            raise ValueError("three")
        return i

    stream = ordered_map(fail_on_3, range(6), workers=2, prefetch=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(stream)

    def broken_source():
        yield 1
        raise FileNotFoundError("walk failed")

    with pytest.raises(FileNotFoundError):
        list(ordered_map(lambda i: i, broken_source()))


def test_bad_worker_or_prefetch_counts_are_refused():
    with pytest.raises(ValueError, match="workers"):
        next(ordered_map(lambda i: i, [1], workers=0))
    with pytest.raises(ValueError, match="prefetch"):
        next(ordered_map(lambda i: i, [1], prefetch=0))


def test_each_thread_keeps_one_lane_number_and_numbers_are_dense():
    lanes = LaneIds()
    seen = {}
    barrier = threading.Barrier(3)

    def work(name):
        barrier.wait()
        seen[name] = {lanes() for _ in range(5)}

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(v) == 1 for v in seen.values())
    assert sorted(next(iter(v)) for v in seen.values()) == [0, 1, 2]


def test_the_initializer_runs_on_each_worker_thread_before_its_first_call():
    ready = set()

    def init():
        ready.add(threading.get_ident())

    def work(x):
        assert threading.get_ident() in ready
        return threading.get_ident()

    threads = set(ordered_map(work, range(20), workers=2, initializer=init))
    assert threads <= ready and threading.get_ident() not in ready

