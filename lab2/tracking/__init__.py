"""The only place that imports wandb, tensorboard or mlflow: tracker start-up (bounded, offline
fallback), media, and the guarded Tracking facade.
"""
