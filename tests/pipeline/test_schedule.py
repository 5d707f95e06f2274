import itertools

import pytest

import tfpar.pipeline.schedule as schedule


@pytest.mark.parametrize("name", schedule.SCHEDULES)
@pytest.mark.parametrize("k, m", itertools.product([1, 2, 3, 5], [1, 2, 4, 8]))
def test_every_stage_runs_each_micro_batch_forward_then_backward(name, k, m):
    sequences = schedule.per_stage(name, k, m)
    kinds = "FBW" if name == "zb1" else "FB"
    assert len(sequences) == k
    for sequence in sequences:
        assert sorted(sequence) == sorted((kind, i) for kind in kinds for i in range(m))
        for i in range(m):
            assert sequence.index(("F", i)) < sequence.index(("B", i))
            if name == "zb1":
                assert sequence.index(("B", i)) < sequence.index(("W", i))
    order = schedule.emission_order(sequences)
    seen = set()
    for stage, (kind, micro) in order:
        if kind == "F" and stage > 0:
            assert (stage - 1, ("F", micro)) in seen
        if kind == "B" and stage < k - 1:
            assert (stage + 1, ("B", micro)) in seen
        if kind == "W":
            assert (stage, ("B", micro)) in seen
        seen.add((stage, (kind, micro)))
    assert len(order) == len(kinds) * k * m


@pytest.mark.parametrize("k, m", [(2, 8), (4, 16), (3, 2)])
def test_1f1b_bounds_activations_gpipe_holds_all(k, m):
    for stage, sequence in enumerate(schedule.per_stage("1f1b", k, m)):
        assert schedule.max_in_flight(sequence) == min(k - stage, m)
        # The backward of micro-batch i starts before the forward of i + K.
        for i in range(m - k):
            assert sequence.index(("B", i)) < sequence.index(("F", i + k))
    for sequence in schedule.per_stage("gpipe", k, m):
        assert schedule.max_in_flight(sequence) == m


@pytest.mark.parametrize("k, m", itertools.product([2, 3, 4], [4, 8, 16]))
def test_zb1_holds_at_most_k_micro_batches_and_idles_less_than_1f1b(k, m):
    for sequence in schedule.per_stage("zb1", k, m):
        assert schedule.max_in_flight(sequence) <= k  # 1F1B's stage 0 holds K
    assert schedule.ideal_bubble(schedule.per_stage("zb1", k, m)) < schedule.bubble_fraction(k, m)
    assert schedule.ideal_bubble(schedule.per_stage("1f1b", k, m)) == pytest.approx(
        schedule.bubble_fraction(k, m))


def test_zb1_at_two_stages_idles_one_tick_per_stage():
    # K=2, M=8, a forward, a B and a W one tick each (stage 0: no B, a
    # two-tick W): each stage has 3M = 24 ticks of work. Stage 1 cannot start
    # before stage 0's first forward ends (tick 1), and stage 0's last W
    # cannot start before stage 1's last B: the best span is 25 ticks, an
    # idle share of 1 - 48 / 50.
    assert schedule.ideal_bubble(schedule.per_stage("zb1", 2, 8)) == pytest.approx(1 - 48 / 50)


def test_ideal_numbers():
    assert schedule.ideal_speedup(2, 8) == pytest.approx(16 / 9)
    assert schedule.bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert schedule.ideal_speedup(1, 8) == 1.0


def test_gpipe_clock_length_is_fill_plus_drain():
    # With unit forward and double backward ticks: 3 * (M + K - 1) ticks.
    events = schedule.clock(schedule.per_stage("gpipe", 4, 8))
    assert max(start + (1 if t[0] == "F" else 2) for start, _, t in events) == 3 * (8 + 4 - 1)


def test_deadlock_and_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="deadlocks"):
        schedule.emission_order([[("B", 0), ("F", 0)], [("F", 0), ("B", 0)]])
    with pytest.raises(ValueError, match=r"schedule must be one of \['gpipe', '1f1b', 'zb1'\]. Received: schedule='zb'"):
        schedule.per_stage("zb", 2, 2)
    with pytest.raises(ValueError, match="num_microbatches must be a whole number >= 1. Received: 0"):
        schedule.per_stage("gpipe", 2, 0)



@pytest.mark.parametrize("name", schedule.SCHEDULES)
@pytest.mark.parametrize("k, m, r", [(1, 2, 2), (2, 4, 1), (3, 2, 2), (2, 3, 3)])
def test_step_order_is_every_replicas_schedule_then_each_stages_all_reduce(name, k, m, r):
    order = schedule.step_order(name, k, m, replicas=r, all_reduce=True)
    base = schedule.emission_order(schedule.per_stage(name, k, m))
    passes = [(stage, task) for stage, task in order if task.kind != "A"]
    assert passes == [(i * k + stage, task) for i in range(r) for stage, task in base]
    # One all-reduce per replica and stage, after every other task (a shared
    # layer's weights, held by the first stage using them, sum later stages'
    # gradients), the last stage's first.
    reduces = order[len(passes):]
    assert reduces == [(i * k + stage, ("A", 0)) for stage in reversed(range(k)) for i in range(r)]
    assert schedule.step_order(name, k, m, replicas=r) == passes
    # An all-reduce waits for nothing but its stage's previous task.
    assert schedule.task_needs(0, schedule.Task("A", 0), schedule.chain(k)) == []


def test_step_order_puts_all_reduces_after_a_later_stages_last_task_under_zb1():
    # Stage 0's last W comes before stage 1's: an all-reduce placed after its
    # own stage's last task would miss a shared weight's later gradients.
    base = schedule.emission_order(schedule.per_stage("zb1", 2, 4))
    last = {stage: place for place, (stage, _) in enumerate(base)}
    assert last[0] < last[1]
    order = schedule.step_order("zb1", 2, 4, all_reduce=True)
    first_reduce = min(place for place, (_, task) in enumerate(order) if task.kind == "A")
    assert first_reduce == len(base)
