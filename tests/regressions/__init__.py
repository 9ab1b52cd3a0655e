"""Regression tests pinned by reviews, one file per review."""
