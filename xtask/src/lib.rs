//! Developer workflows: cargo xtask up | test | bench | e2e.
