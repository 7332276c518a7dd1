//! In-process connections: one half of a `tokio::io::duplex` pipe handed to a server over
//! a channel. When the gateway and the activator share a process (`sluice run`), the
//! gateway's requests reach the activator this way: HTTP/1.1 as over loopback, but a held
//! request costs memory only, no file descriptor.

use std::io;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes buffered each way in one in-process connection (a socket buffer's order).
const PIPE_BUFFER: usize = 64 * 1024;
/// Connections handed over but not yet accepted.
const BACKLOG: usize = 1024;

/// The client's side: opens connections to one in-process server.
#[derive(Clone, Debug)]
pub struct LocalConnector(mpsc::Sender<DuplexStream>);

/// The server's side: what [`crate::serve::serve`] accepts besides its TCP listener.
#[derive(Debug)]
pub struct LocalListener(mpsc::Receiver<DuplexStream>);

/// A connector and the listener its connections arrive on.
pub fn pair() -> (LocalConnector, LocalListener) {
    let (tx, rx) = mpsc::channel(BACKLOG);
    (LocalConnector(tx), LocalListener(rx))
}

// === impl LocalConnector ===

impl LocalConnector {
    /// A new connection; refused once the server has stopped.
    pub async fn connect(&self) -> io::Result<DuplexStream> {
        let (client, server) = tokio::io::duplex(PIPE_BUFFER);
        self.0.send(server).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "in-process server stopped",
            )
        })?;
        Ok(client)
    }
}

// === impl LocalListener ===

impl LocalListener {
    /// The next connection; `None` once every connector is gone.
    pub async fn accept(&mut self) -> Option<DuplexStream> {
        self.0.recv().await
    }
}
