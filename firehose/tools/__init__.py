"""What drives whole Locust runs from outside and reports on them: one package per tool (bench, sweep, chaos,
optimize), each with its report, and the modules they share (headless runs, references, server cost, CPU usage,
datasets, the target database, machine info). A tool imports the run's public pieces and the shared modules,
never another tool's insides."""
