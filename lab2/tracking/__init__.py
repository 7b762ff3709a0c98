"""The only place that imports wandb, tensorboard or mlflow: startup (caches under an unwritable HOME, W&B's mode,
each tracker's init kwargs) and trackers (the guarded Tracking facade and what each tracker gets beyond scalars).
"""
