//! Support code for Porta's integration tests: root file systems, bundles, the runtime under test.
