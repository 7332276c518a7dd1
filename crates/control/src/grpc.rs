//! The control plane's feeds over gRPC: `sluice.v1.RoutesService/Watch` for gateways,
//! `sluice.v1.EndpointsService/Watch` for activators (and autoscalers), and
//! `sluice.v1.ConfigService/Watch` for autoscalers.

use std::pin::Pin;
use std::time::Duration;

use sluice_core::feed::{Event, Feed, Item, Route};
use sluice_proto::v1::config_service_server::{ConfigService, ConfigServiceServer};
use sluice_proto::v1::endpoints_service_server::{EndpointsService, EndpointsServiceServer};
use sluice_proto::v1::routes_service_server::{RoutesService, RoutesServiceServer};
use sluice_proto::v1::{
    ConfigEvent, ConfigMap, EndpointsEvent, RevisionEndpoints, RoutesEvent, WatchConfigRequest,
    WatchEndpointsRequest, WatchRoutesRequest,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};

type Events<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A feed served as one of the watch services; its watches end when `stop` turns true.
#[derive(Clone, Debug)]
pub struct Watch<T> {
    feed: Feed<T>,
    stop: watch::Receiver<bool>,
}

/// The feeds a control plane serves.
#[derive(Clone, Debug, Default)]
pub struct Feeds {
    pub routes: Feed<Route>,
    pub endpoints: Feed<RevisionEndpoints>,
    pub config: Feed<ConfigMap>,
}

/// Serves the feeds on `listener` until `shutdown` completes. Then every watch ends, so
/// that the connections close and followers go looking for the next control plane
/// (a watch never ends on its own, and a graceful shutdown waits for open streams).
pub async fn serve(
    listener: TcpListener,
    feeds: Feeds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let Feeds {
        routes,
        endpoints,
        config,
    } = feeds;
    let (stop_tx, stop) = watch::channel(false);
    let stopping = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(RoutesServiceServer::new(Watch {
            feed: routes,
            stop: stop.clone(),
        }))
        .add_service(EndpointsServiceServer::new(Watch {
            feed: endpoints,
            stop: stop.clone(),
        }))
        .add_service(ConfigServiceServer::new(Watch { feed: config, stop }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping)
        .await
}

impl<T: Item> Watch<T> {
    /// `feed`, whose watches end when `stop` turns true.
    pub(crate) fn new(feed: Feed<T>, stop: watch::Receiver<bool>) -> Self {
        Self { feed, stop }
    }

    /// The feed's events for `namespace` as `M`, until the server stops.
    pub(crate) fn events<M>(&self, namespace: String) -> Events<M>
    where
        M: From<Event<T>> + Send + 'static,
    {
        let mut events = Box::pin(self.feed.events(namespace));
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(event) = event else { return };
                if tx.send(Ok(M::from(event))).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl RoutesService for Watch<Route> {
    type WatchStream = Events<RoutesEvent>;

    async fn watch(
        &self,
        request: tonic::Request<WatchRoutesRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(
            self.events(request.into_inner().namespace),
        ))
    }
}

#[tonic::async_trait]
impl EndpointsService for Watch<RevisionEndpoints> {
    type WatchStream = Events<EndpointsEvent>;

    async fn watch(
        &self,
        request: tonic::Request<WatchEndpointsRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(
            self.events(request.into_inner().namespace),
        ))
    }
}

#[tonic::async_trait]
impl ConfigService for Watch<ConfigMap> {
    type WatchStream = Events<ConfigEvent>;

    async fn watch(
        &self,
        _: tonic::Request<WatchConfigRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(self.events(String::new())))
    }
}
