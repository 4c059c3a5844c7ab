"""The outbox: events waiting for delivery upstream, and the forwarders that deliver them."""
