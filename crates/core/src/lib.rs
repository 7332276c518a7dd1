//! Plumbing shared by two or more Sluice binaries: the serve loop and drain, body-end
//! guards, the breaker, time-weighted concurrency stats, Knative's header vocabulary and
//! forwarding rules, the per-origin connection pool, the stats push to the autoscaler,
//! and the one place errors become responses.

pub mod address;
pub mod body;
pub mod breaker;
pub mod drain;
pub mod duration;
pub mod feed;
pub mod forward;
pub mod headers;
pub mod memory;
pub mod metrics;
pub mod phase;
pub mod probe;
pub mod process;
pub mod proxy_body;
pub mod push;
pub mod respond;
pub mod revision;
pub mod serve;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod upstream;

pub use body::GuardedBody;
pub use breaker::{Breaker, BreakerParams, BreakerPermit, QueueFull};
pub use drain::Drainer;
pub use proxy_body::{BodyGuard, ProxyBody};
pub use revision::RevisionKey;
pub use stats::{ReqEvent, RequestStats, StatsReport};
