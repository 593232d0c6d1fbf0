"""Imports fine but has no setup(server)."""

VALUE = 1
