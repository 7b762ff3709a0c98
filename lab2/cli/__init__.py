"""The console commands: lab2-eval and lab2-predict, a module each; lab2-report, lab2-export and lab2-flops in
tools.py; lab2-train is lab2.api.main (setup.cfg). A UserError ends each as one `prog: error: ...` line."""
