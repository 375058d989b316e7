"""Micro-benchmarks run by ``mira-spark bench <name>``; not tests, and never imported by the job."""
