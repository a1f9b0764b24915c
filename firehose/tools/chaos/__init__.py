"""`firehose chaos`: writers alone, then writers with analysts, on a prefilled table."""
