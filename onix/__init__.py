"""ONIX: the machine plane (stones, store, states, rollback) beside a Nix plane."""

__version__ = "0.1.0"
