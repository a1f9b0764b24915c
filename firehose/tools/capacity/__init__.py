"""`firehose capacity`: the largest population of engineers a PostgreSQL serves, per strategy."""
