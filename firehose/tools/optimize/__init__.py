"""`firehose optimize`: the 8 queries before and after schema/indexes.sql."""
