"""L3 links (``edge_agent.contracts.L3Link``): ``http``, ``mqtt`` (MQTT 5 request/response) and
``folder`` (air-gapped). ``wire.py`` is the document format all three carry."""
