"""Shared plumbing: database, errors, money, time and wire schemas."""
