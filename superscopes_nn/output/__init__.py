"""What a person reads or types: the HTML report, the command line (explain, demo, report, run, plan)."""
