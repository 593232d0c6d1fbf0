"""Statistics of the bench's samples: summaries (percentiles from bemcp.percentiles), medians, ratios."""

import statistics

from ..percentiles import percentile


def describe(samples):
    """mean, median, min, max, stdev, p90, p99 of ``samples`` (any unit), or {} if none."""
    if not samples:
        return {}
    s = sorted(samples)
    return {"n": len(s), "mean": statistics.fmean(s), "median": percentile(s, 50), "min": s[0],
            "max": s[-1], "stdev": statistics.pstdev(s) if len(s) > 1 else 0.0,
            "p90": percentile(s, 90), "p99": percentile(s, 99)}


def median(values):
    """The median of the values that are not None, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b
