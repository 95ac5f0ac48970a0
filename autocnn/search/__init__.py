"""The search: Optuna studies, trials, pruning, sampling, workers, resume and results.

Imports spec, data, models, training and tracking; never outputs or the command line.
"""
