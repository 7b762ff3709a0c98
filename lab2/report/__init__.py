"""lab2's HTML pages: a run's report.html and the comparison of several runs (pages.py, templates/)."""
