"""Benchmarks: figures printed as plain-text tables and recorded in bench/out/ (see bench/README.md).

They are measurements, never tests: nothing here is collected by pytest or fails a build on a slow figure.
"""
