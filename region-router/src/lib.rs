//! Region router: nearest healthy region, failover and operator drain.
