"""The registry file (``registry.yaml``) read into a run's configuration: the first step of a run."""
