"""Helpers the tests share (test modules never import each other: what two of them need is here).

- ``waiting``: ``until``, the one way a test waits for the system under test;
- ``printers``: records, jobs and a run permit for the printer driver tests;
- ``printer_kits``: every registered printer against its catalog simulator (contract suite);
- ``printer_faults``: the whole agent with a printer that is broken on purpose;
- ``plc``: units on the simulated line, a background heartbeat, free ports;
- ``line``: running the agent against simulators and checking the ledger against the gate;
- ``hygiene``: the fixture that fails a test leaving tasks, threads or sockets behind.
"""
