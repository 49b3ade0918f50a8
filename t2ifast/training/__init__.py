"""The training system: checkpoints (atomic, safe to load, resumable)."""
