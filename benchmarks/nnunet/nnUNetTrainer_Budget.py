"""nnU-Net v2 trainer for segfuse's equal-budget benchmark (copied into nnunetv2's trainer folder).

benchmarks/nnunet_hippocampus.sh installs this file into
``nnunetv2/training/nnUNetTrainer/variants/segfuse_benchmark/`` (nnU-Net finds
trainers by class name there) after rewriting the ``BUDGET`` line. It changes
only what the benchmark needs:

- ``num_epochs`` × ``num_iterations_per_epoch`` = the iteration count, and the
  training loop also stops once the optimisation time (batch fetch + train step,
  validation excluded, as segfuse counts it) reaches the budget;
- one validation batch per epoch instead of 50 (nnU-Net's pseudo-Dice is only a log);
- no final validation: with fold ``all`` it would predict the 160 training cases;
  the benchmark scores the 40 held-out cases itself with segfuse's evaluate;
- writes ``segfuse_budget.json`` (iterations, optimisation seconds, s/iteration).
"""

from __future__ import annotations

import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET = {"iterations": 110, "iterations_per_epoch": 10, "minutes": 30.0}


class nnUNetTrainer_Budget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    # no __init__ override: nnUNetTrainer records its init kwargs from the subclass's __init__ signature,
    # which differs between nnunetv2 versions; the settings are applied before the optimiser is built instead
    def initialize(self):
        per_epoch = int(BUDGET["iterations_per_epoch"])
        self.num_iterations_per_epoch = per_epoch
        self.num_epochs = max(1, -(-int(BUDGET["iterations"]) // per_epoch))  # PolyLR decays over these
        self.num_val_iterations_per_epoch = 1
        self.segfuse_budget_s = float(BUDGET["minutes"]) * 60
        self.segfuse_max_iterations = int(BUDGET["iterations"])
        super().initialize()

    def run_training(self):
        # nnUNetTrainer.run_training's loop, plus the iteration cap and the time budget
        self.on_train_start()
        iterations, train_s, wall0 = 0, 0.0, time.monotonic()
        done = False
        for _epoch in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                t0 = time.monotonic()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                train_s += time.monotonic() - t0
                iterations += 1
                if iterations >= self.segfuse_max_iterations or train_s >= self.segfuse_budget_s:
                    done = True
                    break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            self.print_to_log_file(f"segfuse budget: {iterations} iterations, {train_s:.1f} s optimisation time")
            if done:
                break
        self.on_train_end()
        if self.local_rank == 0:
            report = {
                "iterations": iterations,
                "epochs": self.current_epoch,
                "iterations_per_epoch": self.num_iterations_per_epoch,
                "train_seconds": round(train_s, 1),
                "seconds_per_iteration": round(train_s / max(1, iterations), 3),
                "wall_seconds_incl_validation_and_checkpoints": round(time.monotonic() - wall0, 1),
                "budget_minutes": BUDGET["minutes"],
                "iteration_cap": self.segfuse_max_iterations,
                "stopped_by": "time" if train_s >= self.segfuse_budget_s else "iterations",
                "batch_size": self.batch_size,
                "patch_size": list(self.configuration_manager.patch_size),
                "torch_threads": torch.get_num_threads(),
                "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),  # noqa: SIM112 (nnU-Net's name)
            }
            with open(os.path.join(self.output_folder, "segfuse_budget.json"), "w") as f:
                json.dump(report, f, indent=2)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("segfuse benchmark: final validation skipped (the 40 held-out cases are scored "
                               "separately with segfuse's evaluate)")
