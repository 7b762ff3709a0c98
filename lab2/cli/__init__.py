"""The console commands: lab2-train, lab2-eval, lab2-predict, lab2-export, lab2-report and lab2-flops, one module
each (setup.cfg's console_scripts). A UserError ends each as one `prog: error: ...` line (lab2.errors)."""
