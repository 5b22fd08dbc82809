"""Pure helpers of hyperparameter sweeps: per-round reports and the results of a finished sweep.

The Ray Tune side (search spaces, the Tuner, the trial function) lives in ``services/sweep.py`` and
``services/tune_trial.py``; ``python -m trainers.sweep`` is the command line.
"""
from .objective import answers_to_target, completed_round, round_report
from .results import best_trial, plot_objective, trial_status, trials_table, write_best_config, write_tables

__all__ = ["answers_to_target", "completed_round", "round_report", "best_trial", "plot_objective",
           "trial_status", "trials_table", "write_best_config", "write_tables"]
