//! Payment provider adapter and the local provider simulator.
