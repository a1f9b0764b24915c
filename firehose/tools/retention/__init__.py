"""`firehose retention`: old telemetry removed while a COPY writer runs, by partition DETACH + DROP or by DELETE."""
