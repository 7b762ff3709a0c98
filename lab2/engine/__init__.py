"""Training: the loop (loop.py, one step top to bottom), its set-up, meter and stop signals, resume, the optimizer
and scheduler registry, evaluation and the run's results.
"""
