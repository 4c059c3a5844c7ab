"""The link to Level 3 (the site server): orders in, serial pages in, unused serials and close
reports out. The contract is ``edge_agent.contracts.L3Link``; drivers live in ``drivers/l3``."""
