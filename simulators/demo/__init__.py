"""`edge-agent demo` and `edge-agent simulate`: the whole line on the bundled simulators.

These commands live with the simulators (registered through the ``edge_agent.commands`` entry
point group), so the agent core never imports a simulator."""
