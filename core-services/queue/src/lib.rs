//! Waiting room: signed queue tokens, verifiable shuffle and admission control.
