"""What runs inside Locust, on the master and on every worker: the lifecycle attached to Locust's events, the
coordinator (master or only process), each writing process's share of a run, the messages between them, the
guards that refuse or stop a run (preflight, connection budget, disk, reachability), and the end-of-run summary.
Nothing here drives Locust from outside (that is firehose.tools)."""
