"""Benchmarks: scripts and ``patchbank bench`` that measure the product and print tables (nothing imports
them)."""
