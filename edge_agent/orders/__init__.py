"""Work orders: what L3 asks the line to pack, its lifecycle, the one command path and the audit
trail every command leaves behind."""
