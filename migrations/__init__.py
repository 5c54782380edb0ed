"""Numbered SQL migrations, shipped inside the distribution as ``runner.migrations``."""
