//! The reply outbox (DESIGN §5): replies are written to the store first,
//! then a worker per instance sends them through the connector, within the
//! platform's rate limits, never twice and never lost.

mod config;
mod limits;
mod reply;
mod templates;
mod worker;

pub use config::{OutboxConfig, RateLimitConfig};
pub use limits::Limiter;
pub use reply::{
    enqueue, enqueue_parts, new_outbox_id, platform_refusal, reply_command, window_refusal,
    ReplyArgs,
};
pub use templates::{render_template, template_vars};
pub use worker::worker;
