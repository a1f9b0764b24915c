"""`firehose soak`: a bounded run under a schedule of faults, and its verdict."""
