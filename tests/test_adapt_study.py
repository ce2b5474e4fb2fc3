"""tools/adapt_study.py: variants run beside a benchmark in progress, and its table pairs each with scratch."""
from __future__ import annotations

import importlib.util
from pathlib import Path


_spec = importlib.util.spec_from_file_location("adapt_study", Path(__file__).resolve().parent.parent / "tools" /
                                               "adapt_study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


class FakeBenchmark:
    """Records what the study asks to train; `finished` are the benchmark's step markers."""

    def __init__(self, finished: set[str]):
        self.finished, self.trained, self.seed = finished, [], 0
        self.pipe = self
        self.plans, self.scratch_plans = "fomoPlans", "fomoPlans_scratch"

    def done(self, step):
        return {"seconds": 1} if step in self.finished else None

    def use_seed(self, seed):
        self.seed = seed

    def _s(self, name):
        return f"{name}_seed{self.seed}"

    def trainer_for(self, task):
        return {4: "Seg", 5: "Cls"}[task.number]

    def train_and_score(self, task, arm, trainer, plans):
        self.trained.append((self.seed, task.key, arm, trainer))
        assert plans == (self.scratch_plans if arm == "scratch" else self.plans), (arm, plans)
        return {"metrics": {"dice": 0.5, "auroc": 0.5}}


def test_study_never_trains_the_benchmarks_own_arms_and_waits_for_its_plans():
    # seed 0: task 4 planned, its pretrained arm scored, its scratch arm still training; task 5 not planned
    bench = FakeBenchmark({"plan_task4_seed0", "preprocess_task4", "evaluate_task4_pretrained_seed0"})
    runs = study.run_study(bench, [0], [4, 5], ["a_nofreeze", "e_avgpool"], log=lambda *_: None)
    assert bench.trained == [(0, "task4", "pretrained", "Seg"),  # finished: read back through its skipped steps
                             (0, "task4", "a_nofreeze", "nnUNetTrainerFomoSeg_tiny_long_nofreeze")]
    assert set(runs[0]["task4"]) == {"pretrained", "a_nofreeze"}


def test_study_table_pairs_each_variant_with_the_scratch_arm_of_its_seed():
    def arm(v):
        return {"metrics": {"auroc": v}}
    runs = {0: {"task5": {"pretrained": arm(0.5), "scratch": arm(0.6), "a_nofreeze": arm(0.7)}},
            1: {"task5": {"pretrained": arm(0.4), "scratch": arm(0.6), "a_nofreeze": arm(0.8)}},
            2: {"task5": {"pretrained": arm(0.5)}}}  # no scratch arm yet: left out of the table
    table = study.study_table(runs, [5])
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "seeds 0 1" in table
    assert "-0.150 ± 0.071" in rows["pretrained"] and "0/2" in rows["pretrained"] and "worse" in rows["pretrained"]
    assert "0.150 ± 0.071" in rows["a_nofreeze"] and "2/2" in rows["a_nofreeze"]
    assert "0.600 ± 0.000" in rows["scratch"]


def test_study_with_max_new_stops_after_that_many_new_arms_and_reads_finished_ones():
    bench = FakeBenchmark({"plan_task4_seed0", "preprocess_task4", "evaluate_task4_a_nofreeze_seed0"})
    study.run_study(bench, [0], [4], ["a_nofreeze", "d_decoder", "b_enclr01"], log=lambda *_: None, max_new=1)
    assert [arm for *_, arm, _ in bench.trained] == ["a_nofreeze", "d_decoder"]  # a: finished, read back
