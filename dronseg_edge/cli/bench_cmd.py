"""CLI commands: bench."""
