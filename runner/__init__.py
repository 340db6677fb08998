"""Hydra-configured federated-learning experiment runner on Flower."""

import os

# Must happen before flwr is imported anywhere: Flower reads this once at import time and
# would otherwise send telemetry to the internet. A user's explicit setting wins.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"
