"""sweeplab's Hydra sweeper: every multirun of train.py is an Optuna study (see sweeplab.sweeper)."""
