"""What a run keeps on disk: files written whole (files), the run folder and its write policy (run_folder),
checkpoints (checkpoint) and the model files lab2 reads (model_file).
"""
