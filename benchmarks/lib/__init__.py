"""The results library (results.py) and the quality runs (runs.py) every benchmark writes through."""
