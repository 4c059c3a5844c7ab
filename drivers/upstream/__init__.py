"""Forwarders: deliver outbox events to level 3 (EPCIS capture interface, MQTT broker, ...)."""
