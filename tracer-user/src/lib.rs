//! The tracer agent as a library: one module per pipeline stage (see ARCHITECTURE.md).
pub mod context;
pub mod health;
pub mod metrics;
pub mod protocol;
pub mod span;
pub mod export;
