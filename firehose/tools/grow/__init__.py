"""`firehose grow`: the growth curve, per layout."""
