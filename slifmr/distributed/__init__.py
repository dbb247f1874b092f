"""Distributed plumbing: collectives (no-ops without a process group) and checkpoints."""
