//! A TCP relay in front of a pod that can be killed: its port closes and every
//! connection through it drops at once, as when a pod's process dies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub struct Relay {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        Self::serve(crate::loopback_listener().await, target)
    }

    /// A relay on a given address: the one a killed relay had, to bring a "restarted"
    /// server back where its clients look for it.
    pub async fn start_at(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        Self::serve(listener, target)
    }

    fn serve(listener: tokio::net::TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting the accept task drops them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let _ = inbound.set_nodelay(true);
                conns.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The pod dies: the port closes and every open connection drops.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
