"""Calibration's logic on synthetic measurements: which layouts it runs,
and the fit of the cost model's coefficients (pure Python)."""

import pytest

from tfpar.planner import calibrate, search
from tfpar.planner.cost_model import Coefficients, Links, Machine

from test_search import FAST, MIB, layer, profile


def test_the_fit_recovers_the_coefficients_that_made_the_measurements():
    # Measurements made from known coefficients (3 terms, 5 layouts): the
    # fit must find them again, with a negligible pull to the prior.
    truth = (0.5, 2.0, 0.25)
    terms = [(1.0, 0.1, 1.0), (2.0, 0.5, 1.0), (1.0, 2.0, 1.0), (4.0, 0.2, 1.0), (0.5, 1.0, 1.0)]
    measured = [sum(c * t for c, t in zip(truth, row)) for row in terms]
    assert calibrate.fit(terms, measured, prior=(1.0, 1.0, 0.0), strength=1e-9) == pytest.approx(truth, rel=1e-5)


def test_a_term_no_anchor_has_keeps_its_prior_and_no_coefficient_goes_negative():
    terms = [(1.0, 0.0, 1.0), (2.0, 0.0, 1.0), (3.0, 0.0, 1.0)]
    # Time falls as the first term grows: only a negative coefficient fits
    # that; it is held at 0 and the constant explains what it can.
    measured = [3.0, 2.0, 1.0]
    fitted = calibrate.fit(terms, measured, prior=(1.0, 7.0, 0.0))
    assert fitted[0] == 0.0
    assert fitted[1] == pytest.approx(7.0)  # its term is 0 in every anchor
    assert 1.0 < fitted[2] < 3.0


def test_a_measurement_that_is_not_positive_is_refused():
    # What TensorFlow's default CPU allocator reports as a peak: 0.
    with pytest.raises(ValueError, match=r"positive measurement.*measured=\[1.0, 0\]"):
        calibrate.fit([(1.0,), (2.0,)], [1.0, 0], prior=(1.0,))


def four_devices():
    model = profile([layer(weights=MIB, activations=1024)] * 4)
    machine = Machine([f"/cpu:{i}" for i in range(4)])
    links = Links({2: (0.0, 1e15), 3: (0.0, 1e15), 4: (0.0, 1e15)}, (0.0, 1e15))
    return model, machine, links


def test_the_anchors_contrast_every_kind_of_layout():
    model, machine, links = four_devices()
    found = search.candidates(model, machine, links, batch_size=64)
    names = [c.name for c in calibrate.anchors(found)]
    assert names == ["one device", "DataParallel(4)", "ModelSplit(2)", "GPipe(2, M=8, gpipe)",
                     "GPipe(4, M=32, 1f1b)", "GPipe(2x2, M=2, 1f1b)"]


def test_anchors_are_only_layouts_that_can_run():
    model, machine, links = four_devices()
    found = search.candidates(model, machine, links, batch_size=64)
    for candidate in found:
        if candidate.kind == "DataParallel" or candidate.options.get("microbatches") == 32:
            candidate.feasible = False
    names = [c.name for c in calibrate.anchors(found)]
    assert "DataParallel(4)" not in names and "GPipe(4, M=32, 1f1b)" not in names
    assert names[0] == "one device" and all(c.feasible for c in calibrate.anchors(found))


def test_calibrated_memory_can_rule_out_a_layout_with_its_reason():
    model, machine, links = four_devices()
    limited = Machine(machine.devices, memory_limits=[20 * MIB] * 4)
    found = search.candidates(model, limited, FAST, batch_size=64)
    one = {c.name: c for c in found}["one device"]
    # 4 MiB of weights x (1 + 1 gradient + 2 Adam slots), and 64 rows x 4 KiB kept.
    assert one.feasible and one.predicted_peak_bytes == [16 * MIB + 64 * 4096]
    search.recombined(found, limited, Coefficients(memory=(1.5, 1.0, 0.0)))
    assert not one.feasible and one.reason == "needs 24.2 MiB on /cpu:0, limit 20.0 MiB"
    search.recombined(found, limited, Coefficients())
    assert one.feasible and one.reason == ""
