"""Payloads: one plain record per command, rendered as JSON here and as Rich in the CLI."""
