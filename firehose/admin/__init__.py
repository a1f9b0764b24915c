"""Admin commands on the target database and the embedded server: `firehose roles`, `firehose reset`."""
