"""Fake engine servers that reproduce each engine's wire format for tests."""
