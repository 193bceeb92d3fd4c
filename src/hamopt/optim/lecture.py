"""Placeholder: filled in by its family issue."""

__all__: list[str] = []
