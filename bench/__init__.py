"""Shared plumbing: the registry class and atomic, content-addressed storage."""
