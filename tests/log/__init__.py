"""Tests of structured logging (gateway.log)."""
