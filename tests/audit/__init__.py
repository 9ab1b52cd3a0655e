"""Tests of the audit trail (gateway.audit)."""
