//! Unit tests for the crate, grouped by layer, over the shared fixture in `fixture`.

mod answer_rules;
mod cache;
mod desired_rules;
mod fixture;
mod packet;
mod push;
mod push_wire;
mod server;
mod tracked;
