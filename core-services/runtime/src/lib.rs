//! Service runtime glue: config, telemetry, metrics, HTTP errors.
