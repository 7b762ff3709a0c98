"""The console commands: lab2-train, lab2-eval, lab2-predict, lab2-export, lab2-report and lab2-flops.
Each main() parses flags before importing torch.
"""
