"""Training and evaluation: the loop (Trainer), its meter and periodic actions, run set-up, the
optimizer and scheduler registry, evaluate(), resume, results and the run report.
"""
