"""mmseg_naslora.utils.timing: functions timed in turns."""
from mmseg_naslora.utils.timing import timed_in_turns


def test_calls_take_turns_after_the_warmup():
    calls = []
    times = timed_in_turns([lambda: calls.append('a'), lambda: calls.append('b')], repeat=3,
                           warmup=2)
    assert calls == ['a', 'b'] * 5
    assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)


def test_at_least_one_timed_call():
    assert len(timed_in_turns([lambda: None], repeat=0, warmup=0)[0]) == 1
