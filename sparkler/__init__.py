"""Sparkler: a Firecracker-compatible microVM monitor. Version string only (start-up budget)."""

__version__ = "0.1.0"
