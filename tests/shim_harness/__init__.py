"""Helpers the hardening tests import (shim builds, a tracked echo server); run-as-script
workloads live here too."""
