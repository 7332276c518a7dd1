//! The control plane's feeds over gRPC: `sluice.v1.RoutesService/Watch` for gateways and
//! `sluice.v1.EndpointsService/Watch` for activators.

use std::pin::Pin;
use std::time::Duration;

use sluice_core::feed::{Feed, Route};
use sluice_proto::v1::endpoints_service_server::{EndpointsService, EndpointsServiceServer};
use sluice_proto::v1::routes_service_server::{RoutesService, RoutesServiceServer};
use sluice_proto::v1::{
    EndpointsEvent, RevisionEndpoints, RoutesEvent, WatchEndpointsRequest, WatchRoutesRequest,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

type Events<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A feed served as one of the watch services.
#[derive(Clone, Debug)]
pub struct Watch<T>(pub Feed<T>);

/// Serves both feeds on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    routes: Feed<Route>,
    endpoints: Feed<RevisionEndpoints>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(RoutesServiceServer::new(Watch(routes)))
        .add_service(EndpointsServiceServer::new(Watch(endpoints)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

#[tonic::async_trait]
impl RoutesService for Watch<Route> {
    type WatchStream = Events<RoutesEvent>;

    async fn watch(
        &self,
        request: tonic::Request<WatchRoutesRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let events = self.0.events(request.into_inner().namespace);
        Ok(tonic::Response::new(Box::pin(
            events.map(|e| Ok(RoutesEvent::from(e))),
        )))
    }
}

#[tonic::async_trait]
impl EndpointsService for Watch<RevisionEndpoints> {
    type WatchStream = Events<EndpointsEvent>;

    async fn watch(
        &self,
        request: tonic::Request<WatchEndpointsRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let events = self.0.events(request.into_inner().namespace);
        Ok(tonic::Response::new(Box::pin(
            events.map(|e| Ok(EndpointsEvent::from(e))),
        )))
    }
}
