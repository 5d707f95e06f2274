"""Tests mirror modules: each module's tests are found by its name.

A module `tfpar/PKG/NAME.py` is tested in `tests/PKG/test_NAME.py` (the
benchmarks in `tests/bench/test_bench_NAME.py`). A module whose behaviour
is tested through others (a step, a cost term, a wrapper) is listed in
`COVERED_BY` with the test files that exercise it. The root of `tests/`
holds only the cross-cutting checks in `CROSS_CUTTING`.
"""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

COVERED_BY = {
    "tfpar/bench/__main__.py": ["tests/bench/test_bench_pipeline.py", "tests/bench/test_bench_hybrid.py"],
    "tfpar/bench/plan.py": ["tests/planner/test_plan.py"],
    "tfpar/bench/timing.py": ["tests/bench/test_bench_data_parallel.py"],
    "tfpar/bench/torch_peer.py": ["tests/bench/test_bench_pipeline.py"],
    "tfpar/comm/all_reduce.py": ["tests/comm/test_powersgd.py", "tests/strategies/test_data_parallel.py"],
    "tfpar/comm/reduce_scatter.py": ["tests/replication/test_optimizer_shards.py"],
    "tfpar/comm/compression.py": ["tests/strategies/test_data_parallel.py", "tests/test_clipping.py"],
    "tfpar/describe.py": ["tests/pipeline/test_placement.py", "tests/strategies/test_shared_layers.py"],
    "tfpar/launch.py": ["tests/cluster/test_launch.py"],
    "tfpar/server.py": ["tests/cluster/test_server.py"],
    "tfpar/models/cnn.py": ["tests/strategies/test_pipeline_contract.py", "tests/planner/test_plan.py"],
    "tfpar/pipeline/costs.py": ["tests/pipeline/test_partition.py", "tests/pipeline/test_placement.py"],
    "tfpar/pipeline/remat.py": ["tests/pipeline/test_engine.py", "tests/strategies/test_pipeline_contract.py"],
    "tfpar/pipeline/replicas.py": ["tests/strategies/test_hybrid.py"],
    "tfpar/pipeline/stage_calls.py": ["tests/pipeline/test_engine.py", "tests/test_inference.py"],
    "tfpar/pipeline/step.py": ["tests/pipeline/test_engine.py", "tests/pipeline/test_gradients.py"],
    "tfpar/pipeline/worker_shards.py": ["tests/strategies/test_hybrid_workers.py"],
    "tfpar/planner/cost_model.py": ["tests/planner/test_search.py", "tests/planner/test_calibrate.py"],
    "tfpar/planner/links.py": ["tests/planner/test_search.py", "tests/planner/test_plan.py"],
    "tfpar/planner/plans.py": ["tests/planner/test_plan.py"],
    "tfpar/planner/profile.py": ["tests/planner/test_plan.py"],
    "tfpar/planner/trials.py": ["tests/planner/test_plan.py"],
    "tfpar/replication/device_speeds.py": ["tests/replication/test_speed_shares.py"],
    "tfpar/replication/input_shares.py": ["tests/replication/test_equal_shares.py",
                                          "tests/replication/test_speed_shares.py"],
    "tfpar/replication/replica_steps.py": ["tests/strategies/test_microbatches.py",
                                           "tests/strategies/test_data_parallel.py"],
    "tfpar/replication/train_function.py": ["tests/strategies/test_data_parallel.py",
                                            "tests/strategies/test_multi_worker.py"],
    "tfpar/strategies/gpipe.py": ["tests/strategies/test_pipeline_contract.py",
                                  "tests/strategies/test_pipeline_errors.py"],
    "tfpar/strategies/model_split.py": ["tests/strategies/test_pipeline_contract.py",
                                        "tests/strategies/test_own_layers.py"],
    "tfpar/strategies/pipeline_strategy.py": ["tests/strategies/test_pipeline_contract.py",
                                              "tests/strategies/test_pipeline_errors.py"],
    "tfpar/strategies/registry.py": ["tests/strategies/test_contract.py"],
}
# Checks of the whole package or of one behaviour across every strategy.
CROSS_CUTTING = {
    "test_api.py", "test_build.py", "test_clipping.py", "test_datasets.py", "test_docs.py",
    "test_doctests.py", "test_fit.py", "test_fit_errors.py", "test_imports.py", "test_inference.py",
    "test_layout.py", "test_lookup_layers.py", "test_notebooks.py", "test_readme.py", "test_train.py",
}


def modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tfpar").rglob("*.py") if p.name != "__init__.py")


def own_tests(module: str) -> list[pathlib.Path]:
    path = pathlib.Path(module).relative_to("tfpar")
    folder = ROOT / "tests" / path.parent
    return [p for p in (folder / f"test_{path.stem}.py", folder / f"test_{path.parent.name}_{path.stem}.py")
            if p.exists()]


def test_every_module_has_its_tests_by_name_or_in_the_index():
    missing = [m for m in modules() if not own_tests(m) and m not in COVERED_BY]
    assert missing == [], "add tests/<folder>/test_<module>.py, or list the tests that cover it in COVERED_BY"


def test_the_index_names_only_modules_without_own_tests_and_test_files_that_exist():
    stale = [m for m in COVERED_BY if m not in modules() or own_tests(m)]
    assert stale == [], "drop these from COVERED_BY: gone, or tested by name"
    absent = [t for tests in COVERED_BY.values() for t in tests if not (ROOT / t).exists()]
    assert absent == []


def test_the_root_of_tests_holds_only_cross_cutting_checks():
    root = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    assert [name for name in root if name not in CROSS_CUTTING] == [], \
        "move module tests next to their module's folder under tests/"
