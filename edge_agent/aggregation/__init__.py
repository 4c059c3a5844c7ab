"""Aggregation: the parent-child hierarchy of unit, bundle, case and pallet.

- :mod:`~edge_agent.aggregation.plan`: the plan a work order carries (levels, counts,
  identifiers, what a partial last parent gets);
- :mod:`~edge_agent.aggregation.sscc`: SSCC and case-serial identifiers, allocated from a range
  persisted before use (or given by L3: :mod:`~edge_agent.aggregation.supply`), never reused
  across crashes;
- :mod:`~edge_agent.aggregation.hierarchy`: the hierarchy in the ledger, with its rules enforced;
  every refused operation raises ``AggregationRefused`` and changes nothing (its values in
  :mod:`~edge_agent.aggregation.records`, references resolved by
  :mod:`~edge_agent.aggregation.references`);
- :mod:`~edge_agent.aggregation.balance`: the hierarchy's part of the reconciliation;
- :mod:`~edge_agent.aggregation.membership`: who holds whom, for the ledger itself;
- :mod:`~edge_agent.aggregation.commands`: ``edge-agent case | unit`` (through the REST API).

The package's ``__init__`` imports nothing, so the order model can import the plan without
pulling in the ledger.
"""
