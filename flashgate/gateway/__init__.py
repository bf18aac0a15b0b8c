"""The uvloop HTTP/1.1 gateway: connections, routing, handlers, worker processes."""
