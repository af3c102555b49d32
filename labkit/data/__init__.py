"""Offline data: sources fetched into the labkit cache by the setup command, generators and provenance."""
