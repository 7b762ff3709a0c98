"""What a run keeps on disk: run folder paths and ownership, atomic writers, checkpoints (save, verify)
and the course lab's weights.
"""
