"""CLI commands: train."""
