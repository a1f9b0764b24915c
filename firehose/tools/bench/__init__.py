"""`firehose bench`: the generator, each strategy against its C-client reference, server cost and profiles."""
