"""Everything that knows the target: launch, attach (gdb), the shim's socket, the Python agent."""
