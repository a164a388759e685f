"""The part a process plays in its tree, read from its title (nginx's "worker process", a
PostgreSQL backend) or from its place in the tree."""

import re

# "nginx: worker process", "nginx: master process /usr/sbin/nginx -c …", "nginx: cache manager process"
_TITLE_PROCESS = re.compile(r"^[\w.-]+: ([a-z][a-z ]*?) process\b")
# PostgreSQL backends retitle themselves "postgres: [cluster: ]user db host(port) state"
_PG_BACKEND = re.compile(r"^postgres: .*\S+ \S+ [\w.:\[\]-]+\(\d+\)")
_PG_TITLE = re.compile(r"^postgres: (?:\d+/\w+: )?([a-z][a-z ]*[a-z])")


def role(command, *, is_root: bool, has_children: bool):
    """A short role from the process title, or from the process's place in the tree; None if alone."""
    title = " ".join(command or [])
    match = _TITLE_PROCESS.match(title)
    if match:
        return match.group(1)
    if _PG_BACKEND.match(title):
        return "backend"
    match = _PG_TITLE.match(title)
    if match:
        return match.group(1)
    if is_root and has_children:
        return "parent"
    if not is_root:
        return "child"
    return None
