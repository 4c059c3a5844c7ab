"""The agent's optional OPC UA server: the line as a PackML-style state machine for SCADA/MES."""
