"""Structured (channel) pruning: groups, criteria, allocation, schedules, materialisation."""
