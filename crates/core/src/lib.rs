//! Plumbing shared by two or more Sluice binaries: the serve loop and drain, body-end
//! guards, the breaker, time-weighted concurrency stats, Knative's header vocabulary,
//! and the one place errors become responses.

pub mod body;
pub mod breaker;
pub mod drain;
pub mod duration;
pub mod headers;
pub mod metrics;
pub mod respond;
pub mod serve;
pub mod shutdown;
pub mod stats;
pub mod telemetry;

pub use body::GuardedBody;
pub use breaker::{Breaker, BreakerParams, BreakerPermit, QueueFull};
pub use drain::Drainer;
pub use stats::{ReqEvent, RequestStats, StatsReport};
