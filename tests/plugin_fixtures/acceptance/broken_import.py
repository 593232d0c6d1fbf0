"""Raises while being imported."""

raise RuntimeError("broken at import on purpose")


def setup(server):  # never reached
    pass
