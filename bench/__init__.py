"""Benchmarks (`make bench`): speed and memory figures measured in one run, printed as ratios."""
