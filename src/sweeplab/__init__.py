"""sweeplab: Hydra-driven experiment sweeps for image classifiers, logged to MLflow."""

from sweeplab.settings import register_resolvers

register_resolvers()
