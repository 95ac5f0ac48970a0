"""autocnn's benchmarks: `run.py` and `search_quality.py` are the entry points, the rest their parts.

A package so tests and the bare loop's child process import the parts by name; it is not
installed with autocnn.
"""
