"""Example domains: data generators, training scripts and analyst rule files."""
