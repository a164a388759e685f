"""The report's ids of contexts and connections, made from the shim's serials. Code that needs an
owner for an id builds the same id from the owner's serial; nothing parses an id back."""


def ctx_id(serial):
    return f"ctx-{serial}" if serial else None


def conn_id(serial):
    return f"conn-{serial}"
