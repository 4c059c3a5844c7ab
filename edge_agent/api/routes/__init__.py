"""REST API routers: orders, line (state, counters, alarms), audit."""
