"""The local REST API: work orders, line state, alarms, close reports, the audit trail.

``create_app`` builds the FastAPI application on the agent's services (the command path, the
alarm board, a line status view, the stored reports); ``ApiServer`` serves it with uvicorn
inside the agent's event loop; ``build`` does both from the ``[api]`` config section.
"""
