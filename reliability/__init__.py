"""Reliability and security checks of the served models: soak, faults, fuzzing, hardening.

`make soak` (reliability/reliability.mk) runs the soak; tests live in tests/reliability/;
RELIABILITY.md holds the figures and the commands that produced them.
"""
