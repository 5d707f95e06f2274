"""Pipeline timeline: intervals, measured bubble, Chrome trace, PNG, callback."""

import json

import pytest

from tfpar.pipeline import schedule
from tfpar.pipeline.timeline import Interval, PipelineTimeline, chrome_trace, ideal_bubble, intervals, measured_bubble
from tfpar.strategies import DataParallel, GPipe
import tfpar

from conftest import build_mlp, compile_model, make_data


def test_intervals_shift_to_zero_and_cap_late_end_stamps():
    order = [(0, ("F", 0)), (1, ("F", 0)), (0, ("F", 1))]
    stamps = [(100.0, 100.9), (100.5, 101.0), (100.6, 100.8)]
    # Task 1 and task 2 waited for task 0: task 0 cannot have ended after 100.5.
    tasks = intervals(order, stamps, needs=[[], [0], [0]])
    assert tasks[0] == Interval(0, "F", 0, 0.0, pytest.approx(0.5))
    assert tasks[1].start == pytest.approx(0.5) and tasks[1].end == pytest.approx(1.0)
    raw = intervals(order, stamps)
    assert raw[0].end == pytest.approx(0.9)  # without needs, stamps as they are


def test_intervals_need_a_stamp_per_task():
    with pytest.raises(ValueError, match="one \\(start, end\\) stamp per task. Received 2 tasks and 1 stamps"):
        intervals([(0, ("F", 0)), (1, ("F", 0))], [(0.0, 1.0)])


def test_bubble_of_the_ideal_gpipe_clock_equals_the_formula():
    # Lay out the ideal schedule (a backward twice a forward): its idle
    # share is exactly (K-1)/(M+K-1), independently of this module.
    for k, m in [(2, 1), (2, 4), (3, 4), (4, 8)]:
        events = schedule.clock(schedule.per_stage("gpipe", k, m))
        tasks = [Interval(stage, kind, micro, start, start + schedule.ticks(task))
                 for start, stage, task in events for kind, micro in [task]]
        assert measured_bubble(tasks) == pytest.approx((k - 1) / (m + k - 1))
        assert ideal_bubble(tasks) == pytest.approx((k - 1) / (m + k - 1))


def test_overlapping_tasks_count_once():
    tasks = [Interval(0, "F", 0, 0, 2), Interval(0, "F", 1, 1, 3), Interval(1, "F", 0, 0, 4)]
    assert measured_bubble(tasks) == pytest.approx(1 - (3 + 4) / (2 * 4))


def test_chrome_trace_has_a_named_row_per_stage_and_microsecond_events():
    trace = chrome_trace([Interval(0, "F", 0, 0.0, 0.002), Interval(1, "B", 3, 0.002, 0.005)],
                         devices=["/cpu:0", "/cpu:1"])
    names = [e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"]
    assert names == ["stage 0 (/cpu:0)", "stage 1 (/cpu:1)"]
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [(e["name"], e["tid"], e["ts"], e["dur"]) for e in events] == [
        ("F0", 0, 0.0, 2000.0), ("B3", 1, 2000.0, 3000.0)]


def test_callback_writes_png_and_trace_and_reports_the_bubble(tmp_path, capsys):
    x, y = make_data(96)
    callback = PipelineTimeline(png=str(tmp_path / "step.png"), trace=str(tmp_path / "step.json"))
    tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=32, epochs=2, verbose=0,
                          strategy=GPipe(2, microbatches=4, record_timeline=True), callbacks=[callback])
    assert (tmp_path / "step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = [e for e in json.loads((tmp_path / "step.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert sorted((e["tid"], e["name"]) for e in events) == sorted(
        (s, f"{k}{m}") for s in (0, 1) for k in "FB" for m in range(4))
    assert len(callback.tasks) == 16 and 0.0 <= callback.bubble < 1.0
    assert callback.ideal_bubble == pytest.approx(1 / 5)
    assert "measured bubble" in capsys.readouterr().out


def test_callback_needs_a_recording_pipeline():
    x, y = make_data(32)
    with pytest.raises(ValueError, match="record_timeline=True"):
        tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=32, verbose=0,
                              strategy=GPipe(2, microbatches=2), callbacks=[PipelineTimeline()])
    with pytest.raises(ValueError, match="needs a pipelined model.*Received a model of type"):
        tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=32, verbose=0,
                              strategy=DataParallel(2), callbacks=[PipelineTimeline()])


def test_recording_does_not_serialise_the_stages():
    # Stamps that tf.function chained in program order (tf.timestamp is
    # stateful) would force every task after the previous one: no two would
    # overlap. Unchained, stage 1 works on micro-batch i while stage 0 works
    # on i+1.
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(256, 10, hidden=(512,) * 4)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2048, 256)).astype("float32"), rng.integers(0, 10, 2048)
    callback = PipelineTimeline(verbose=False)
    tfpar.fit_distributed(model, x, y, batch_size=1024, epochs=1, verbose=0, callbacks=[callback],
                          strategy=GPipe(2, microbatches=4, record_timeline=True))
    stage0 = [t for t in callback.tasks if t.stage == 0]
    stage1 = [t for t in callback.tasks if t.stage == 1]
    overlaps = [(a, b) for a in stage0 for b in stage1 if a.start < b.end and b.start < a.end]
    assert overlaps, callback.tasks


def test_callback_with_an_unknown_number_of_steps_shows_the_step_before_the_last():
    import tensorflow as tf

    x, y = make_data(96)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(32)
    assert dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY
    callback = PipelineTimeline(verbose=False)
    tfpar.fit_distributed(compile_model(build_mlp()), dataset, epochs=1, verbose=0,
                          strategy=GPipe(2, microbatches=2, record_timeline=True), callbacks=[callback])
    assert len(callback.tasks) == 2 * 2 * 2 and 0.0 <= callback.bubble < 1.0
