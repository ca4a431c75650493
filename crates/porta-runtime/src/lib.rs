//! Porta's runtime core.
