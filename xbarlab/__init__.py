"""xbarlab: the application shell (CLI, config loading) over simulation, instruments, training."""

__version__ = "0.1.0"
