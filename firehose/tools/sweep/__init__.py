"""`firehose sweep`: strategies x user counts, each against its reference, and the connection-scale axis."""
