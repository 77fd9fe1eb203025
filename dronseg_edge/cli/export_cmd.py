"""CLI commands: export."""
