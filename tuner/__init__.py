"""tuner: which optimizer, learning rate, warmup, decay and batch-size scaling rule train a
linear classifier best, found with Optuna and kept durable in SQLite or PostgreSQL."""

__version__ = "0.1.0"
