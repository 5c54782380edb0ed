"""The runner: a job-runner daemon for serverless GPU work whose Cancel really stops it."""

__version__ = "0.1.0"
