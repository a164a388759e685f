"""Reports to people and tools: text, HTML, Prometheus metrics, pprof, the live view."""
