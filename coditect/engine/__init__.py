"""The engine: workers that claim jobs, run them and write their results."""
