"""Simulated level-3 receivers: an EPCIS 2.0 capture server, an MQTT consumer."""
