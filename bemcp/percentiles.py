"""Percentiles by nearest rank: the one definition perf.log, `bemcp logs` and `bemcp bench` share."""


def percentile(sorted_values, q):
    """The ``q``-th percentile (0..100) of already-sorted values by nearest rank: the smallest
    value with at least ``q`` % of the values at or below it (p99 of 100 values is the 99th).
    None for no values."""
    n = len(sorted_values)
    if not n:
        return None
    rank = -(-n * q // 100)          # ceil(n * q / 100), exact for integer q
    return sorted_values[min(n, max(1, int(rank))) - 1]
