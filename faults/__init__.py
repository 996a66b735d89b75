"""The fault suite: faults injected into a real sessiond under load, and what was lost (nothing)."""
