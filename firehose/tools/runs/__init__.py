"""The kept runs read back: `firehose runs` (list), `firehose compare` (side by side), `firehose run --repeat`."""
