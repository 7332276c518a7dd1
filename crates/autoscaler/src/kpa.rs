//! The KPA's pure arithmetic, as Knative computes it (reference §3.3–§3.5): per-second
//! windows of revision-wide stats, and the decider that turns their averages into a
//! desired pod count and the excess burst capacity.
//!
//! Time is a [`Duration`](std::time::Duration) since the autoscaler's epoch, passed in as
//! `now`: nothing here reads a clock, sleeps or spawns, so every case is a unit test with
//! exact numbers.

mod collector;
mod decider;
mod delay;
mod pod_autoscaler;
mod reason;
mod revision_autoscaler;
mod window;

pub use collector::{Collector, Reporter, StatSample};
pub use decider::{Decider, DeciderSpec, ScaleResult};
pub use delay::MaxWindow;
pub use pod_autoscaler::{Activity, Mode, PodAutoscaler, ScaleBounds, Step};
pub use reason::{Reason, ReasonKind};
pub use revision_autoscaler::{
    ACTIVATION_TIMEOUT, Decision, PodCounts, RevisionAutoscaler, decider_spec,
};
pub use window::Window;
