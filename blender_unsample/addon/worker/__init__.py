"""The worker process: starting it and reading its events, Set Up Worker's environment, the cluster it may join."""
