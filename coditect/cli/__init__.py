"""The ``coditect`` command."""

from coditect.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
