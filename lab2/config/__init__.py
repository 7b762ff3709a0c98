"""The flags: TrainConfig (one dataclass, the command line's source), checked number types and ranges,
recipes and --report_to. Imports no torch, so --help answers at once.
"""
