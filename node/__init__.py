"""The regional node daemon: storage API, replication and enforcement for one region."""
