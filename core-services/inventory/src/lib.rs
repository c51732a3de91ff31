//! Seat inventory: holds, sales, expiry and GA pools.
