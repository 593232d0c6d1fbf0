"""The report's pictures, drawn with matplotlib (the `bench` extra), imported only here."""

import os

PLOTS = ("latency", "throughput", "stress_throughput", "stress_rss")


def draw(targets, summary, rounds, out_dir):
    """{name: path} of the PNGs written; raises ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [t.name for t in targets]
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    written = {}

    def save(fig, name):
        path = os.path.join(out_dir, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path

    # Latency: the distribution of every target's echo calls, as a CDF on a log axis.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n in names:
        samples = sorted(x for rd in rounds
                         for x in rd["targets"].get(n, {}).get("sections", {}).get("echo", {}).get("samples_ms", []))
        if samples:
            ys = [(i + 1) / len(samples) * 100 for i in range(len(samples))]
            ax.plot(samples, ys, label=n, color=colours[n])
    ax.set(xscale="log", xlabel="echo round trip (ms, log scale)", ylabel="calls at or below (%)",
           title="Echo latency distribution, one call in flight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, "latency")

    # Throughput against calls in flight.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n in names:
        conc = summary[n].get("concurrency") or {}
        points = sorted((int(w), f["calls_per_s"]) for w, f in conc.items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=n, color=colours[n])
    ax.set(xscale="log", yscale="log", xlabel="echo calls in flight (log scale)", ylabel="calls/s (log scale)",
           title="Throughput against requests in flight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, "throughput")

    # The stress run over time: calls/s, and RSS of every process of the target.
    for key, label, title in (("calls_per_s", "calls/s", "Throughput over the stress run"),
                              ("rss_mb", "RSS, all processes (MB)", "Memory over the stress run")):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for n in names:
            series = (summary[n].get("stress") or {}).get("series") or []
            if series:
                ax.plot([p["t"] for p in series], [p[key] for p in series], label=n, color=colours[n])
        ax.set(xlabel="seconds into the stress run", ylabel=label, title=title)
        if key == "calls_per_s":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, f"stress_{'throughput' if key == 'calls_per_s' else 'rss'}")
    return written

