"""Ray Tune sweeps: sweep files (space), the sweep driver (sweep) and its results."""
