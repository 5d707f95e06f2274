"""The planner's logic on synthetic costs: pure Python, no measurement."""

import pytest

from tfpar.planner import cost_model, search
from tfpar.planner.cost_model import LayerCost, Links, Machine, ModelProfile

MIB = 1 << 20
# Links fast enough not to matter unless a test says otherwise.
FAST = Links({2: (0.0, 1e15), 3: (0.0, 1e15), 4: (0.0, 1e15)}, (0.0, 1e15))


def layer(forward=1.0, backward=2.0, weights=8 * MIB, activations=0, name="dense") -> LayerCost:
    """A layer whose forward takes `forward` seconds per row, its backward
    `backward`; `weights` bytes, all trainable."""
    return LayerCost(name, (0.0, forward), (0.0, backward), weights, weights, activations, activations)


def profile(layers, slots=2, overhead=0.0) -> ModelProfile:
    return ModelProfile(list(layers), input_bytes=0, optimizer_slots=slots, step_overhead=overhead)


def by_name(found):
    return {c.name: c for c in found}


def test_data_parallel_on_independent_devices_shares_the_compute():
    model = profile([layer()] * 4)
    one = cost_model.data_parallel(model, Machine(["a"]), FAST, 8, 1)
    two = cost_model.data_parallel(model, Machine(["a", "b"]), FAST, 8, 2)
    # 4 layers x 3 s per row x 8 rows on one device; 4 rows each on two.
    assert one.seconds == pytest.approx(96.0)
    assert two.seconds == pytest.approx(48.0)


def test_devices_sharing_one_processor_cannot_beat_its_capacity():
    model = profile([layer()] * 4)
    shared = Machine(["a", "b"], groups=[0, 0], capacity={0: 1.0})
    assert cost_model.data_parallel(model, shared, FAST, 8, 2).seconds == pytest.approx(96.0)
    half = Machine(["a", "b"], groups=[0, 0], capacity={0: 2.0})
    assert cost_model.data_parallel(model, half, FAST, 8, 2).seconds == pytest.approx(48.0)


def test_all_reduce_time_is_added_to_data_parallel():
    model = profile([layer(weights=MIB)])
    links = Links({2: (0.5, MIB)}, (0.0, 1e15))  # 0.5 s latency, 1 MiB/s
    two = cost_model.data_parallel(model, Machine(["a", "b"]), links, 2, 2)
    assert two.seconds == pytest.approx(3.0 + 0.5 + 1.0)


@pytest.mark.parametrize("k, m", [(2, 2), (2, 8), (4, 4), (3, 6)])
def test_a_fill_drain_pipeline_costs_m_plus_k_minus_1_slots(k, m):
    # Each stage's micro-batch: forward 1 s, backward 2 s. GPipe runs
    # M + K - 1 forward slots and as many backward slots.
    model = profile([layer(forward=1.0, backward=2.0)] * k)  # one row per micro-batch
    machine = Machine([str(i) for i in range(k)])
    predicted = cost_model.pipeline(model, machine, FAST, m, [1] * k, microbatches=m)
    assert predicted.seconds == pytest.approx(3.0 * (m + k - 1))


def test_stages_hold_the_micro_batches_their_schedule_keeps():
    # 1 byte of activation per sample per layer, 8 samples per micro-batch.
    model = profile([layer(weights=0, activations=1)] * 2, slots=0)
    machine = Machine(["a", "b"])
    peaks = {schedule: cost_model.pipeline(model, machine, FAST, 32, [1, 1], microbatches=4,
                                           schedule=schedule).peak_bytes
             for schedule in ("gpipe", "1f1b")}
    # Stage 1's input is stage 0's output, 1 byte per sample.
    assert peaks["gpipe"] == [4 * 8 * 1, 4 * 8 * 2]
    assert peaks["1f1b"] == [2 * 8 * 1, 1 * 8 * 2]
    remat = cost_model.pipeline(model, machine, FAST, 32, [1, 1], microbatches=4, rematerialize=True)
    assert remat.peak_bytes == [8 * 1, 4 * 8 * 1 + 8 * 1]


def test_a_memory_limit_below_the_model_rules_out_data_parallel_for_a_pipeline():
    # 4 layers of 8 MiB of weights. A data-parallel replica holds them, two
    # gradient copies (its own, the all-reduced) and Adam's two slots:
    # 32 x 5 = 160 MiB. A stage of two pipeline stages holds half of that
    # (its gradient sum and one micro-batch's): 80 MiB.
    model = profile([layer()] * 4)
    machine = Machine(["a", "b", "c", "d"], memory_limits=[80 * MIB] * 4)
    found = search.candidates(model, machine, FAST, batch_size=16)
    chosen = search.choose(found)
    names = by_name(found)
    assert not names["DataParallel(2)"].feasible
    assert names["DataParallel(2)"].reason == "needs 160.0 MiB on a, limit 80.0 MiB"
    assert not names["one device"].feasible
    assert chosen.kind == "GPipe" and len(chosen.options["devices"]) >= 2
    assert max(chosen.predicted_peak_bytes) <= 80 * MIB
    assert chosen.reason.startswith("fastest feasible")


def test_without_a_limit_the_fastest_layout_is_chosen():
    model = profile([layer()] * 4)
    machine = Machine(["a", "b", "c", "d"])
    chosen = search.choose(search.candidates(model, machine, FAST, batch_size=16))
    # Four independent devices, free links: four replicas share the work
    # with no bubble.
    assert chosen.name == "DataParallel(4)"


def test_a_3_to_1_device_pair_gets_3_to_1_shares():
    model = profile([layer()] * 2)
    machine = Machine(["fast", "slow"], speeds=[3.0, 1.0])
    found = by_name(search.candidates(model, machine, FAST, batch_size=64))
    candidate = found["DataParallel(2, shares 48:16)"]
    assert candidate.options["device_speeds"] == [3.0, 1.0]
    # Both finish together: 48 rows at speed 3 take as long as 16 at speed 1.
    assert candidate.predicted_step_seconds == pytest.approx(2 * 3 * 16)


def test_layouts_that_do_not_divide_the_batch_are_rejected_with_the_reason():
    model = profile([layer()] * 4)
    found = by_name(search.candidates(model, Machine(["a", "b", "c"]), FAST, batch_size=20))
    assert found["DataParallel(3)"].reason == "batch_size 20 is not divisible by 3 replicas"
    assert found["GPipe(2, M=8, gpipe)"].reason == "batch_size 20 is not divisible by 8 micro-batches"
    assert not found["GPipe(3, M=3, 1f1b)"].feasible
    assert found["GPipe(2, M=4, gpipe)"].feasible


def test_hybrids_are_candidates_on_enough_devices():
    model = profile([layer()] * 4)
    found = by_name(search.candidates(model, Machine(["a", "b", "c", "d"]), FAST, batch_size=16))
    hybrid = found["GPipe(2x2, M=4, zb1)"]
    assert hybrid.options["data_parallel"] == 2 and len(hybrid.predicted_peak_bytes) == 4


def test_nothing_fits_says_why_for_each_layout():
    model = profile([layer()] * 2)
    machine = Machine(["a", "b"], memory_limits=[MIB, MIB])
    with pytest.raises(ValueError, match=r"No layout fits: one device: needs .* on a, limit 1.0 MiB"):
        search.choose(search.candidates(model, machine, FAST, batch_size=8))


def test_ranked_puts_the_chosen_first_and_the_rejected_last():
    model = profile([layer()] * 4)
    found = search.candidates(model, Machine(["a", "b", "c"]), FAST, batch_size=20)
    chosen = search.choose(found)
    order = search.ranked(found)
    assert order[0] is chosen
    feasible = [c.feasible for c in order]
    assert feasible == sorted(feasible, reverse=True)
    times = [c.predicted_step_seconds for c in order if c.feasible]
    assert times == sorted(times)
