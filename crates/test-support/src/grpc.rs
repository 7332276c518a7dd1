//! A gRPC echo app (unary and server-streaming) to run behind a queue-proxy.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod pb {
    #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
    tonic::include_proto!("sluice.test.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

pub use pb::echo_client::EchoClient;

#[derive(Default)]
struct EchoApp;

#[tonic::async_trait]
impl Echo for EchoApp {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            index: 0,
        }))
    }

    type ServerStreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let EchoRequest { message, count } = request.into_inner();
        let stream = tokio_stream::iter((0..count).map(move |index| {
            Ok(EchoReply {
                message: message.clone(),
                index,
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The echo app on a free port (h2c).
pub async fn start_echo() -> crate::Running {
    let listener = crate::loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = crate::stop_channel();
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoApp))
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
    });
    crate::Running {
        addr,
        stop: Some(stop),
        task,
    }
}
