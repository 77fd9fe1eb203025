"""CLI commands: infer."""
