"""Tools for service authors: `nexusd new` (generate a service package) and `nexusd check`
(run the service contract against a service). See docs/service-contract.md."""
