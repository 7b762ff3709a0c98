"""What the model does, for any nn.Module: FLOPs, gradient/weight/update flow and its health checks,
and the figures (statistics -> matplotlib). Never imports data or engine.
"""
