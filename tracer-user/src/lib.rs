//! The tracer agent as a library: one module per pipeline stage (see ARCHITECTURE.md).
pub mod btf;
pub mod context;
pub mod health;
pub mod metrics;
pub mod process;
pub mod protocol;
pub mod span;
pub mod export;
pub mod assemble;
pub mod conntable;
pub mod event;
pub mod loader;
pub mod reader;
pub mod agent;
pub mod config;
