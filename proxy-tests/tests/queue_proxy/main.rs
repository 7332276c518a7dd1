//! The queue-proxy end to end: a real sample app (or gRPC / websocket app) behind a real
//! queue-proxy, over loopback sockets, on ephemeral ports.

#![allow(clippy::unwrap_used)]

mod drain;
mod limits;
mod probes;
mod protocols;
mod stats;
mod timeouts;
